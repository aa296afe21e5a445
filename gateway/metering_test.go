package gateway

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/proxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

// startBytesTarget starts an origin that answers GET /bytes?n=N with N
// bytes and POST /echo with the request body.
func startBytesTarget(t testing.TB) *testpeers.Target {
	return testpeers.NewTarget(t, testpeers.BytesHandler())
}

// startSizedTarget starts a TCP server for tunnel payloads: a client
// sends "N M\n" and N bytes; the server reads them, answers M bytes and
// closes. It returns its address.
func startSizedTarget(t testing.TB) string {
	ln := testpeers.Listen(t, "127.0.0.1")
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				br := bufio.NewReader(c)
				var n, m int64
				if _, err := fmt.Fscanf(br, "%d %d\n", &n, &m); err != nil {
					return
				}
				if _, err := io.CopyN(io.Discard, br, n); err != nil {
					return
				}
				_, _ = io.CopyN(c, testpeers.Zeros{}, m)
			})
		}
	})
	return ln.Addr().String()
}

// exchange sends the sized target's request for n bytes out and m back
// over a tunnel (reading from r, which may hold buffered tunnel bytes),
// reads the answer and closes the tunnel. It returns the payload each
// way, counted by the client.
func exchange(c net.Conn, r io.Reader, n, m int64) (sent, received int64, err error) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	head := fmt.Sprintf("%d %d\n", n, m)
	if _, err := io.WriteString(c, head); err != nil {
		return 0, 0, fmt.Errorf("tunnel write: %w", err)
	}
	k, err := io.CopyN(c, testpeers.Zeros{}, n)
	if err != nil {
		return int64(len(head)) + k, 0, fmt.Errorf("tunnel write: %w", err)
	}
	got, err := io.CopyN(io.Discard, r, m)
	if err != nil {
		return int64(len(head)) + k, got, fmt.Errorf("tunnel read: %d of %d bytes: %w", got, m, err)
	}
	return int64(len(head)) + k, got, nil
}

// mustExchange is exchange failing t on an error.
func mustExchange(t testing.TB, c net.Conn, r io.Reader, n, m int64) {
	t.Helper()
	if _, _, err := exchange(c, r, n, m); err != nil {
		t.Fatal(err)
	}
}

// dialConnect opens a CONNECT tunnel to target through the gateway at
// addr, with user as the proxy user name ("" for none).
func dialConnect(addr, user, target string) (net.Conn, *bufio.Reader, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	req := fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n", target, target)
	if user != "" {
		req += "Proxy-Authorization: Basic " + basic(user, gwPass) + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		c.Close()
		return nil, nil, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("CONNECT %s: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, nil, fmt.Errorf("CONNECT %s: %d %s", target, resp.StatusCode, resp.Header.Get(ReasonHeader))
	}
	return c, br, nil
}

// connectTunnel is dialConnect failing t on an error.
func connectTunnel(t testing.TB, addr, user, target string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br, err := dialConnect(addr, user, target)
	if err != nil {
		t.Fatal(err)
	}
	return c, br
}

// dialSOCKS opens a SOCKS5 tunnel to target through the gateway's SOCKS5
// listener at addr, with user as the user name ("" for no auth).
func dialSOCKS(addr, user, target string) (net.Conn, error) {
	var auth *proxy.Auth
	if user != "" {
		auth = &proxy.Auth{User: user, Password: gwPass}
	}
	d, err := proxy.SOCKS5("tcp", addr, auth, proxy.Direct)
	if err != nil {
		return nil, err
	}
	c, err := d.Dial("tcp", target)
	if err != nil {
		return nil, fmt.Errorf("SOCKS5 %s: %w", target, err)
	}
	return c, nil
}

func basic(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// poolUsage is the usage the store totals for pool "main".
func (e *env) poolUsage() pharox.UsageRow {
	e.t.Helper()
	rows, err := e.mgr.Usage(context.Background(), pharox.UsageQuery{GroupBy: pharox.UsageByPool})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, r := range rows {
		if r.Key == e.pool.ID.String() {
			return r
		}
	}
	return pharox.UsageRow{Key: e.pool.ID.String()}
}

// waitUsage waits until the store's usage for pool "main" is want (the
// witnesses count a moment after the gateway released) and fails with
// both otherwise.
func (e *env) waitUsage(want pharox.UsageRow, witness func() pharox.Usage) {
	e.t.Helper()
	e.waitNoLeases()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := e.poolUsage()
		if witness != nil {
			want.Usage = pharox.Usage{Requests: want.Requests, BytesSent: witness().BytesSent, BytesReceived: witness().BytesReceived}
		}
		if got.Leases == want.Leases && got.Usage == want.Usage {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("usage of pool main: %d leases, %+v; counted independently: %d leases, %+v", got.Leases, got.Usage, want.Leases, want.Usage)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// absoluteGet sends one absolute-form request for rawURL (also https://,
// which the gateway fetches itself through a tunnel of the upstream) to
// the gateway at addr and returns the status and the body's length.
func absoluteGet(t *testing.T, addr, rawURL string) (int, int64) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", rawURL, u.Host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	defer resp.Body.Close()
	n, _ := io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, n
}

// TestMeteringForwardByteExact: the usage a forwarded request reports is
// exactly the bytes on its connection to the upstream, as the upstream
// counts them (request line, headers and body it read; answer it wrote;
// the SOCKS handshake and, for an https:// URL, the CONNECT and TLS the
// gateway made through it), summed over many requests on kept-alive
// connections, some at once.
func TestMeteringForwardByteExact(t *testing.T) {
	for _, kind := range []string{"http", "socks5"} {
		t.Run(kind+" upstream", func(t *testing.T) {
			testpeers.CheckLeaks(t)
			e := newEnv(t, nil)
			site := startBytesTarget(t)
			ln := testpeers.Counting(testpeers.Listen(t, "127.0.0.2"))
			var up *testpeers.Upstream
			if kind == "http" {
				up = testpeers.StartGoproxy(t, "127.0.0.2", testpeers.HTTPOptions{Listener: ln})
			} else {
				up = testpeers.StartSOCKS5On(t, ln, "127.0.0.2")
			}
			e.add(0, testpeers.Alice(), up)
			requests := 0
			for _, n := range []int{0, 1, 517, 64 << 10, 300 << 10} {
				if err := testpeers.GetBytes(e.client, site.Plain.URL, n); err != nil {
					t.Fatal(err)
				}
				requests++
			}
			for _, n := range []int{1, 10 << 10, 200 << 10} {
				if err := testpeers.PostEcho(e.client, site.Plain.URL, n); err != nil {
					t.Fatal(err)
				}
				requests++
			}
			if status, n := absoluteGet(t, e.addr, site.TLS.URL+"/bytes?n=1000"); status != http.StatusOK || n != 1000 {
				t.Fatalf("absolute-form https:// GET: %d, %d bytes", status, n)
			}
			requests++
			if kind == "http" {
				// Requests at once take the upstream connections in turns.
				// (Through SOCKS5 a connection dialed for a request that
				// got another one first would keep its handshake bytes
				// uncounted until some request uses it: left out here.)
				var wg sync.WaitGroup
				for g := range 8 {
					wg.Go(func() {
						for i := range 4 {
							if err := testpeers.GetBytes(e.client, site.Plain.URL, 1000*g+i); err != nil {
								t.Error(err)
							}
						}
					})
				}
				wg.Wait()
				requests += 32
			}
			e.waitUsage(pharox.UsageRow{Leases: int64(requests), Usage: pharox.Usage{Requests: int64(requests)}},
				func() pharox.Usage { return pharox.Usage{BytesSent: ln.Read(), BytesReceived: ln.Written()} })
		})
	}
}

// TestMeteringTunnelsByteExact: a CONNECT or SOCKS5 tunnel reports one
// request and its payload each way, exactly what the clients sent and
// received through it, through HTTP and SOCKS5 upstreams, many at once.
func TestMeteringTunnelsByteExact(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, nil)
	target := startSizedTarget(t)
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	e.add(0, testpeers.Alice(), testpeers.StartSOCKS5(t, "127.0.0.3"))
	var sent, received, tunnels atomic.Int64
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			for i := range 5 {
				n, m := int64(g*40000+i*333), int64(i*70000+g)
				var c net.Conn
				var r io.Reader
				var err error
				if (g+i)%2 == 0 {
					c, r, err = dialConnect(e.addr, "", target)
				} else {
					c, err = dialSOCKS(e.socks, "", target)
					r = c
				}
				if err != nil {
					t.Error(err)
					return
				}
				out, in, err := exchange(c, r, n, m)
				if err != nil {
					t.Error(err)
					return
				}
				sent.Add(out)
				received.Add(in)
				tunnels.Add(1)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	want := pharox.Usage{Requests: tunnels.Load(), BytesSent: sent.Load(), BytesReceived: received.Load()}
	e.waitUsage(pharox.UsageRow{Leases: tunnels.Load(), Usage: want}, nil)
}

// TestMeteringDisabled: with DisableMetering releases report nothing.
func TestMeteringDisabled(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.DisableMetering = true })
	site := startBytesTarget(t)
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	if err := testpeers.GetBytes(e.client, site.Plain.URL, 100); err != nil {
		t.Fatal(err)
	}
	c, br := connectTunnel(t, e.addr, "", startSizedTarget(t))
	mustExchange(t, c, br, 10, 10)
	e.waitNoLeases()
	leases, err := e.store.ListLeases(context.Background(), pharox.LeaseQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 2 {
		t.Fatalf("%d leases, want 2", len(leases))
	}
	for _, l := range leases {
		if l.Usage != nil {
			t.Errorf("lease %s reported %+v with metering off", l.ID, *l.Usage)
		}
	}
	if u := e.poolUsage(); u.Leases != 0 || !u.Usage.IsZero() {
		t.Errorf("usage %+v with metering off", u)
	}
}

// socksConnectReply makes a SOCKS5 CONNECT to target through the
// gateway's SOCKS5 listener at addr without authentication and returns
// the reply code (0 success, 2 connection not allowed by ruleset, ...).
// A successful tunnel is closed.
func socksConnectReply(t *testing.T, addr, target string) byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	host, portStr, _ := net.SplitHostPort(target)
	port, _ := strconv.Atoi(portStr)
	req := []byte{5, 1, 0, 5, 1, 0, 3, byte(len(host))}
	req = append(append(req, host...), byte(port>>8), byte(port))
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 2+4)
	if _, err := io.ReadFull(c, reply); err != nil {
		t.Fatalf("SOCKS5 reply: %v", err)
	}
	if reply[0] != 5 || reply[1] != 0 || reply[2] != 5 {
		t.Fatalf("SOCKS5 reply %v", reply)
	}
	return reply[3]
}

// TestQuotaRefusal: an acquisition refused by a consumer quota is
// answered 429 with Retry-After and a one-line reason naming the quota
// (SOCKS5: reply 2), counted in the metrics; the capped consumer is
// served again once under its cap, and a byte quota over its limit gives
// a Retry-After until the day ends.
func TestQuotaRefusal(t *testing.T) {
	testpeers.CheckLeaks(t)
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(c *Config) { c.Registerer = reg })
	site := startBytesTarget(t)
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	target := startSizedTarget(t)
	ctx := context.Background()
	consumer, err := e.store.EnsureConsumer(ctx, DefaultConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.mgr.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1}}); err != nil {
		t.Fatal(err)
	}
	// An open tunnel holds the consumer's one lease.
	held, heldR := connectTunnel(t, e.addr, "", target)

	resp, err := e.client.Get(site.Plain.URL + "/bytes?n=10")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	const reason = `consumer "gateway" is over its quota max_concurrent_leases=1; retry in 1s`
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" ||
		resp.Header.Get(ReasonHeader) != reason || string(body) != "pharox gateway: "+reason+"\n" {
		t.Fatalf("over the cap: %d, Retry-After %q, reason %q, body %q; want 429, 1 and %q",
			resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get(ReasonHeader), body, reason)
	}
	if code := socksConnectReply(t, e.socks, target); code != 2 {
		t.Fatalf("SOCKS5 over the cap: reply %d, want 2 (connection not allowed by ruleset)", code)
	}
	e.waitLog(func(m map[string]any) bool {
		return m["kind"] == "socks5" && m["status"] == float64(429) && m["reason"] == reason
	})

	// Under the cap again: served.
	mustExchange(t, held, heldR, 1, 1)
	e.waitNoLeases()
	if err := testpeers.GetBytes(e.client, site.Plain.URL, 10); err != nil {
		t.Fatalf("under the cap again: %v", err)
	}
	if code := socksConnectReply(t, e.socks, target); code != 0 {
		t.Fatalf("SOCKS5 under the cap again: reply %d", code)
	}

	// A day's bytes used up: Retry-After until the UTC day ends.
	if _, err := e.mgr.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID,
		QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1}}); err != nil {
		t.Fatal(err)
	}
	resp, err = e.client.Get(site.Plain.URL + "/bytes?n=10")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	retry, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	now := time.Now().UTC()
	untilMidnight := pharox.DayStart(now).AddDate(0, 0, 1).Sub(now)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(resp.Header.Get(ReasonHeader), "bytes_per_day=1;") ||
		time.Duration(retry)*time.Second < untilMidnight-time.Minute || time.Duration(retry)*time.Second > untilMidnight+time.Minute {
		t.Fatalf("over the day's bytes: %d, Retry-After %q (until midnight: %v), reason %q",
			resp.StatusCode, resp.Header.Get("Retry-After"), untilMidnight, resp.Header.Get(ReasonHeader))
	}

	e.waitLog(func(m map[string]any) bool { return m["kind"] == "socks5" && m["status"] == float64(200) })
	got := gather(t, reg)
	for k, v := range map[string]float64{
		`pharox_gateway_quota_refusals_total{limit="max_concurrent_leases",subject="consumer"}`: 2,
		`pharox_gateway_quota_refusals_total{limit="bytes_per_day",subject="consumer"}`:         1,
		`pharox_gateway_requests_total{code="429",kind="http"}`:                                 2,
		`pharox_gateway_requests_total{code="429",kind="socks5"}`:                               1,
	} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

// TestMeteringMetrics: the usage counters add up what the releases
// reported, by pool.
func TestMeteringMetrics(t *testing.T) {
	testpeers.CheckLeaks(t)
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(c *Config) { c.Registerer = reg })
	site := startBytesTarget(t)
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	for _, n := range []int{10, 20000} {
		if err := testpeers.GetBytes(e.client, site.Plain.URL, n); err != nil {
			t.Fatal(err)
		}
	}
	c, br := connectTunnel(t, e.addr, "", startSizedTarget(t))
	mustExchange(t, c, br, 300, 4000)
	e.waitNoLeases()
	u := e.poolUsage()
	got := gather(t, reg)
	for k, v := range map[string]float64{
		`pharox_gateway_usage_bytes_total{direction="sent",pool="main"}`:     float64(u.BytesSent),
		`pharox_gateway_usage_bytes_total{direction="received",pool="main"}`: float64(u.BytesReceived),
		`pharox_gateway_usage_requests_total{pool="main"}`:                   3,
	} {
		if got[k] != v || v == 0 {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

// TestMeteringRemote: over a pharox server the gateway reports usage
// through the Go client, and a quota's refusal (429 from the server,
// a *pharox.QuotaError in the client) is the gateway's 429 too.
func TestMeteringRemote(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnvWith(t, true, nil)
	site := startBytesTarget(t)
	ln := testpeers.Counting(testpeers.Listen(t, "127.0.0.2"))
	e.add(0, testpeers.Alice(), testpeers.StartGoproxy(t, "127.0.0.2", testpeers.HTTPOptions{Listener: ln}))
	for _, n := range []int{0, 5000} {
		if err := testpeers.GetBytes(e.client, site.Plain.URL, n); err != nil {
			t.Fatal(err)
		}
	}
	e.waitUsage(pharox.UsageRow{Leases: 2, Usage: pharox.Usage{Requests: 2}},
		func() pharox.Usage { return pharox.Usage{BytesSent: ln.Read(), BytesReceived: ln.Written()} })

	ctx := context.Background()
	consumer, err := e.store.EnsureConsumer(ctx, DefaultConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.mgr.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1}}); err != nil {
		t.Fatal(err)
	}
	held, heldR := connectTunnel(t, e.addr, "", startSizedTarget(t))
	resp, err := e.client.Get(site.Plain.URL + "/bytes?n=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" ||
		!strings.Contains(resp.Header.Get(ReasonHeader), `consumer "gateway" is over its quota max_concurrent_leases=1`) {
		t.Fatalf("over the cap through a server: %d, Retry-After %q, reason %q; want 429",
			resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get(ReasonHeader))
	}
	mustExchange(t, held, heldR, 1, 1)
	e.waitNoLeases()
}

// TestQuotaWaitedOut: with Config.AcquireWait a request over a consumer's
// concurrency cap waits for a lease to come back instead of a 429.
func TestQuotaWaitedOut(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.AcquireWait = 10 * time.Second })
	site := startBytesTarget(t)
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	ctx := context.Background()
	consumer, err := e.store.EnsureConsumer(ctx, DefaultConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.mgr.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1}}); err != nil {
		t.Fatal(err)
	}
	held, heldR := connectTunnel(t, e.addr, "", startSizedTarget(t))
	released := make(chan struct{})
	time.AfterFunc(200*time.Millisecond, func() {
		defer close(released)
		_, _, _ = exchange(held, heldR, 1, 1)
	})
	start := time.Now()
	if err := testpeers.GetBytes(e.client, site.Plain.URL, 10); err != nil {
		t.Fatalf("over the cap with a wait: %v", err)
	}
	<-released
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Fatalf("served after %v, before the held lease came back", waited)
	}
	e.waitNoLeases()
}
