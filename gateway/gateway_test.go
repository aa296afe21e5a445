package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/proxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

func TestRotationAcrossUpstreams(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, nil)
	ups := []*testpeers.Upstream{startHTTPUpstream(t, "127.0.0.2", true), startHTTPUpstream(t, "127.0.0.3", true), startHTTPUpstream(t, "127.0.0.4", true)}
	e.add(0, testpeers.Alice(), ups...)
	for range 9 {
		status, _, reason := get(t, e.client, e.tg.Plain.URL+"/small")
		if status != http.StatusOK {
			t.Fatalf("status %d (%s)", status, reason)
		}
	}
	got := countBy(e.tg.Seen())
	for _, u := range ups {
		if got[u.IP] != 3 {
			t.Errorf("upstream %s served %d of 9 requests, want 3 (round robin): %v", u.IP, got[u.IP], got)
		}
	}
	for _, h := range e.tg.headers {
		if h.Get("Proxy-Authorization") != "" || h.Get("X-Forwarded-For") != "" {
			t.Fatalf("target saw proxy headers: %v", h)
		}
	}
	if n := e.activeLeases(); n != 0 {
		t.Fatalf("%d leases still active after the requests", n)
	}
	// Each upstream's success was fed back into its health.
	for _, u := range ups {
		if p := e.proxy(u.IP); p.CheckedAt == nil || p.LastStatusCode != http.StatusOK || p.Status != pharox.StatusActive {
			t.Errorf("upstream %s: checked %v, last status %d, status %s; want the success reported", u.IP, p.CheckedAt, p.LastStatusCode, p.Status)
		}
	}
	logs := e.logs.String()
	if strings.Contains(logs, testpeers.Password) || strings.Contains(logs, "Proxy-Authorization") {
		t.Fatalf("access log leaks credentials: %s", logs)
	}
	if !strings.Contains(logs, `"msg":"gateway request"`) || !strings.Contains(logs, `"path":"/small"`) {
		t.Fatalf("access log lacks request lines: %s", logs)
	}
}

func TestStickySessionAndFailover(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, nil)
	ups := map[string]*testpeers.Upstream{}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		ups[ip] = startHTTPUpstream(t, ip, false)
	}
	e.add(0, nil, ups["127.0.0.2"], ups["127.0.0.3"], ups["127.0.0.4"])
	c := e.proxyClient("pool-main-session-abc123-ttl-600")
	for range 5 {
		if status, _, reason := get(t, c, e.tg.Plain.URL+"/"); status != http.StatusOK {
			t.Fatalf("status %d (%s)", status, reason)
		}
	}
	seen := countBy(e.tg.Seen())
	if len(seen) != 1 {
		t.Fatalf("sticky session spread over upstreams: %v", seen)
	}
	var first string
	for ip := range seen {
		first = ip
	}
	// Another session rotates independently of this one.
	get(t, e.proxyClient("session-other"), e.tg.Plain.URL+"/")
	e.tg.Seen()

	// The session's upstream dies: the next request fails over on the
	// same call, and the session stays on its new upstream.
	ups[first].Close()
	c.Transport.(*http.Transport).CloseIdleConnections()
	for range 5 {
		if status, _, reason := get(t, c, e.tg.Plain.URL+"/"); status != http.StatusOK {
			t.Fatalf("after failover: status %d (%s)", status, reason)
		}
	}
	after := countBy(e.tg.Seen())
	if len(after) != 1 || after[first] != 0 {
		t.Fatalf("after the upstream died the session went to %v, want one other upstream than %s", after, first)
	}
	dead := e.proxy(first)
	if dead.FailureStreak != 1 || dead.LastError == "" {
		t.Fatalf("dead upstream: streak %d, last error %q; want the connect failure reported once", dead.FailureStreak, dead.LastError)
	}
	e.waitNoLeases()
}

func TestMaxConcurrencyUnderLoad(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) {
		c.AcquireWait = 60 * time.Second
		c.DisableAccessLog = true
	})
	ups := []*testpeers.Upstream{startHTTPUpstream(t, "127.0.0.2", false), startHTTPUpstream(t, "127.0.0.3", false), startHTTPUpstream(t, "127.0.0.4", false)}
	const maxConc = 2
	e.add(maxConc, nil, ups...)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			resp, err := e.client.Get(e.tg.Plain.URL + "/?sleep=2ms")
			if err != nil {
				errs <- err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("status %d: %s", resp.StatusCode, resp.Header.Get(ReasonHeader))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if hits := len(e.tg.Seen()); hits != n {
		t.Fatalf("target saw %d requests, want %d", hits, n)
	}
	for ip, m := range e.tg.maxInFlight() {
		if m > maxConc {
			t.Errorf("upstream %s carried %d requests at once, max_concurrency is %d", ip, m, maxConc)
		}
	}
	if n := e.activeLeases(); n != 0 {
		t.Fatalf("%d leases still active", n)
	}
}

func TestConnectToTLSTarget(t *testing.T) {
	for _, proto := range []pharox.Protocol{pharox.ProtocolHTTP, pharox.ProtocolSOCKS5} {
		t.Run(string(proto), func(t *testing.T) {
			testpeers.CheckLeaks(t)
			e := newEnv(t, nil)
			var ups []*testpeers.Upstream
			for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
				if proto == pharox.ProtocolHTTP {
					ups = append(ups, startHTTPUpstream(t, ip, true))
				} else {
					ups = append(ups, testpeers.StartSOCKS5(t, ip))
				}
			}
			e.add(0, testpeers.Alice(), ups...)
			for range 4 {
				status, from, reason := get(t, e.client, e.tg.TLS.URL+"/secure")
				if status != http.StatusOK || from == "" {
					t.Fatalf("status %d from %q (%s)", status, from, reason)
				}
				// A new tunnel per request: drop the kept-alive one.
				e.client.Transport.(*http.Transport).CloseIdleConnections()
			}
			got := countBy(e.tg.Seen())
			if got["127.0.0.2"] != 2 || got["127.0.0.3"] != 2 {
				t.Fatalf("tunnels went through %v, want 2 each", got)
			}
			// Plain HTTP through the same upstreams too.
			if status, from, _ := get(t, e.client, e.tg.Plain.URL+"/"); status != http.StatusOK || from == "" {
				t.Fatalf("plain request through %s upstream: %d from %q", proto, status, from)
			}
			e.waitNoLeases()
		})
	}
}

func TestHTTPSUpstream(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) {
		// The test certificate names example.com, not 127.0.0.4.
		c.UpstreamTLS.ServerName = "example.com"
	})
	e.add(0, testpeers.Alice(), testpeers.StartHTTPS(t, "127.0.0.4"))
	for _, u := range []string{e.tg.Plain.URL, e.tg.TLS.URL} {
		if status, from, reason := get(t, e.client, u+"/over-tls"); status != http.StatusOK || from != "127.0.0.4" {
			t.Fatalf("GET %s through an HTTPS upstream: %d from %q (%s)", u, status, from, reason)
		}
	}
	e.client.Transport.(*http.Transport).CloseIdleConnections()
	// An upstream whose certificate does not verify is a connect failure.
	bad := newEnv(t, nil)
	bad.add(0, testpeers.Alice(), testpeers.StartHTTPS(t, "127.0.0.5"))
	status, _, reason := get(t, bad.client, bad.tg.Plain.URL+"/")
	if status != http.StatusBadGateway || !strings.Contains(reason, "certificate") {
		t.Fatalf("unverified HTTPS upstream: %d %q, want 502 naming the certificate", status, reason)
	}
	if p := bad.proxy("127.0.0.5"); p.FailureStreak != 1 {
		t.Fatalf("TLS failure not reported (streak %d)", p.FailureStreak)
	}
	e.waitNoLeases()
	bad.waitNoLeases()
}

func TestSOCKS5Inbound(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.Password = gwPass })
	ups := []*testpeers.Upstream{startHTTPUpstream(t, "127.0.0.2", false), testpeers.StartSOCKS5(t, "127.0.0.3")}
	e.add(0, testpeers.Alice(), ups[1])
	e.add(0, nil, ups[0])

	client := func(user, pass string) *http.Client {
		d, err := proxy.SOCKS5("tcp", e.socks, &proxy.Auth{User: user, Password: pass}, proxy.Direct)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{
			DialContext:     d.(proxy.ContextDialer).DialContext,
			TLSClientConfig: e.tg.TLS.Client().Transport.(*http.Transport).TLSClientConfig.Clone(),
		}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	c := client("pool-main-session-s1", gwPass)
	for _, u := range []string{e.tg.Plain.URL, e.tg.TLS.URL, e.tg.Plain.URL} {
		status, from, _ := get(t, c, u+"/via-socks")
		if status != http.StatusOK {
			t.Fatalf("GET %s over SOCKS5: status %d", u, status)
		}
		if from == "" {
			t.Fatal("target did not record the upstream")
		}
		c.Transport.(*http.Transport).CloseIdleConnections()
	}
	if seen := countBy(e.tg.Seen()); len(seen) != 1 {
		t.Fatalf("a sticky SOCKS5 session spread over %v", seen)
	}
	// Bad password and bad routing parameters are refused at auth.
	for _, cred := range [][2]string{{"pool-main", "wrong"}, {"pool-main-colour-red", gwPass}} {
		if _, err := client(cred[0], cred[1]).Get(e.tg.Plain.URL + "/"); err == nil {
			t.Fatalf("SOCKS5 with %q accepted", cred[0])
		}
	}
	e.waitNoLeases()
	e.waitLog(func(m map[string]any) bool { return m["kind"] == "socks5" && m["status"] == float64(200) })
}

func TestBadCredentials(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.User, c.Password = "acme", gwPass })
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	cases := []struct {
		name, user, pass, reason string
	}{
		{"no credentials", "", "", "proxy authentication required"},
		{"wrong password", "acme-pool-main", "nope", "bad proxy credentials"},
		{"wrong user", "other-pool-main", gwPass, "bad proxy credentials"},
		{"unknown key", "acme-pool-main-colour-red", gwPass, `unknown key "colour"`},
		{"odd pairs", "acme-pool", gwPass, "no value"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := &url.URL{Scheme: "http", Host: e.addr}
			if tc.user != "" {
				u.User = url.UserPassword(tc.user, tc.pass)
			}
			tr := &http.Transport{Proxy: http.ProxyURL(u)}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get(e.tg.Plain.URL + "/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusProxyAuthRequired || resp.Header.Get("Proxy-Authenticate") == "" {
				t.Fatalf("status %d, Proxy-Authenticate %q; want 407 with a challenge", resp.StatusCode, resp.Header.Get("Proxy-Authenticate"))
			}
			if r := resp.Header.Get(ReasonHeader); !strings.Contains(r, tc.reason) {
				t.Fatalf("reason %q, want it to mention %q", r, tc.reason)
			}
			// CONNECT gets the same answer.
			c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(u)}}
			_, err = c.Get(e.tg.TLS.URL + "/")
			if err == nil || !strings.Contains(err.Error(), "Proxy Authentication Required") {
				t.Fatalf("CONNECT with bad credentials: %v", err)
			}
		})
	}
	if seen := e.tg.Seen(); len(seen) != 0 {
		t.Fatalf("refused requests reached the target: %v", seen)
	}
	// The right credentials pass.
	if status, _, reason := get(t, e.proxyClient("acme-pool-main-country-ar"), e.tg.Plain.URL+"/"); status != http.StatusOK {
		t.Fatalf("good credentials: %d (%s)", status, reason)
	}
	if strings.Contains(e.logs.String(), gwPass) {
		t.Fatal("log holds the gateway password")
	}
}

func TestNoUpstreamAvailable(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, nil)
	up := startHTTPUpstream(t, "127.0.0.2", false)
	e.add(1, nil, up)
	cases := []struct {
		name, user, url string
		status          int
		reason          string
	}{
		{"filter matches none", "country-de", e.tg.Plain.URL, 503, "no upstream available"},
		{"unknown pool", "pool-nowhere", e.tg.Plain.URL, 503, `pool "nowhere" not found`},
		{"connect, filter matches none", "city-lima", e.tg.TLS.URL, 503, "no upstream available"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.proxyClient(tc.user)
			if strings.HasPrefix(tc.url, "https") {
				_, err := c.Get(tc.url)
				if err == nil || !strings.Contains(err.Error(), "Service Unavailable") {
					t.Fatalf("CONNECT: %v, want 503", err)
				}
				return
			}
			status, _, reason := get(t, c, tc.url)
			if status != tc.status || !strings.Contains(reason, tc.reason) {
				t.Fatalf("status %d reason %q, want %d %q", status, reason, tc.status, tc.reason)
			}
		})
	}
	// The only upstream is busy (max_concurrency 1, held by a lease).
	l, err := e.mgr.Acquire(context.Background(), "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	if status, _, reason := get(t, e.client, e.tg.Plain.URL); status != 503 || reason == "" {
		t.Fatalf("busy pool: %d %q", status, reason)
	}
	if _, err := e.mgr.Release(context.Background(), l.ID); err != nil {
		t.Fatal(err)
	}
	// It dies: 502 with the reason, and the failure is reported.
	up.Close()
	if status, _, reason := get(t, e.client, e.tg.Plain.URL); status != 502 || !strings.Contains(reason, "connect") {
		t.Fatalf("dead only upstream: %d %q, want 502 naming the connect failure", status, reason)
	}
	if p := e.proxy("127.0.0.2"); p.FailureStreak != 1 {
		t.Fatalf("failure streak %d, want 1", p.FailureStreak)
	}
	if seen := e.tg.Seen(); len(seen) != 0 {
		t.Fatalf("target saw %v", seen)
	}
	e.waitNoLeases()
}

func TestUpstreamAuthAndBanRetry(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, nil)
	bad := startHTTPUpstream(t, "127.0.0.2", true)
	good := startHTTPUpstream(t, "127.0.0.3", true)
	e.add(0, &pharox.Credentials{User: testpeers.User, Password: "wrong"}, bad)
	e.add(0, testpeers.Alice(), good)

	// Whatever upstream comes first, every request ends on the good one.
	for range 4 {
		status, from, reason := get(t, e.client, e.tg.Plain.URL+"/")
		if status != http.StatusOK || from != "127.0.0.3" {
			t.Fatalf("status %d from %q (%s), want 200 from 127.0.0.3", status, from, reason)
		}
		e.client.Transport.(*http.Transport).CloseIdleConnections()
		if status, from, _ := get(t, e.client, e.tg.TLS.URL+"/"); status != http.StatusOK || from != "127.0.0.3" {
			t.Fatalf("CONNECT: status %d from %q", status, from)
		}
		e.client.Transport.(*http.Transport).CloseIdleConnections()
	}
	p := e.proxy("127.0.0.2")
	if p.LastError != reasonUpstreamAuth || p.Status != pharox.StatusInactive {
		t.Fatalf("upstream with wrong credentials: status %s, last error %q", p.Status, p.LastError)
	}

	// The target bans the good upstream's address: 429 is reported as a
	// ban and the request retried on another upstream; with none left the
	// client gets the target's answer.
	third := startHTTPUpstream(t, "127.0.0.4", true)
	e.add(0, testpeers.Alice(), third)
	e.tg.Ban("127.0.0.3")
	for range 3 {
		status, from, reason := get(t, e.client, e.tg.Plain.URL+"/")
		if status == http.StatusOK && from != "127.0.0.4" {
			t.Fatalf("200 from %q", from)
		}
		if status != http.StatusOK {
			t.Fatalf("status %d (%s), want a retry onto 127.0.0.4", status, reason)
		}
	}
	// The ban counts for the target's site only (see target_health_test.go).
	states, err := e.mgr.TargetStates(context.Background(), e.proxy("127.0.0.3").ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 1 || states[0].LastStatusCode != http.StatusTooManyRequests || !states[0].CoolingAt(time.Now()) {
		t.Fatalf("banned upstream: per-site states %+v, want the 429 reported for the target", states)
	}
	// Banned everywhere: the client gets the target's own answer.
	e.tg.Ban("127.0.0.4")
	if status, _, reason := get(t, e.client, e.tg.Plain.URL+"/"); status != http.StatusTooManyRequests || reason != "" {
		t.Fatalf("all upstreams banned: %d (reason %q), want the target's 429", status, reason)
	}
	e.waitNoLeases()
}

func TestRetryPostBeforeSend(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, nil)
	dead := startHTTPUpstream(t, "127.0.0.2", false)
	e.add(0, nil, dead, startHTTPUpstream(t, "127.0.0.3", false))
	dead.Close()
	for i := range 4 {
		payload := strings.Repeat(fmt.Sprintf("payload %d;", i), 1000)
		resp, err := e.client.Post(e.tg.Plain.URL+"/echo", "text/plain", strings.NewReader(payload))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(got) != payload {
			t.Fatalf("POST %d: status %d, body of %d bytes (%v), want the %d bytes echoed; target got %v\n%s", i, resp.StatusCode, len(got), err, len(payload), e.tg.posts, e.logs.String())
		}
	}
	// Round robin offered the dead upstream at least once; each time the
	// POST, not yet sent, went to the live one.
	if p := e.proxy("127.0.0.2"); p.FailureStreak < 1 {
		t.Fatalf("dead upstream never tried (streak %d)", p.FailureStreak)
	}
	e.waitNoLeases()
}

func TestReleaseOnClientDisconnect(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, nil)
	e.add(1, nil, startHTTPUpstream(t, "127.0.0.2", false))

	// A request the client abandons while the target is still working.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.tg.Plain.URL+"/hang", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := e.client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	e.waitLeases(1)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned request: %v", err)
	}
	e.waitNoLeases()

	// A CONNECT tunnel the client drops.
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(e.tg.TLS.URL, "https://")
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", host, host)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	if n := e.activeLeases(); n != 1 {
		t.Fatalf("open tunnel holds %d leases, want 1", n)
	}
	tcfg := e.tg.TLS.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	tcfg.ServerName = "127.0.0.1"
	tc := tls.Client(conn, tcfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS through the tunnel: %v", err)
	}
	conn.Close()
	e.waitNoLeases()

	// The log has the tunnel with its bytes (written as the handler ends,
	// just after the release).
	e.waitLog(func(m map[string]any) bool {
		return m["kind"] == "connect" && m["status"] == float64(200) && m["bytes_in"].(float64) > 0 && m["bytes_out"].(float64) > 0
	})
}

// waitLog waits for an access log line that match accepts.
func (e *env) waitLog(match func(map[string]any) bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, line := range strings.Split(strings.TrimSpace(e.logs.String()), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && match(m) {
				return
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no matching log line in: %s", e.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) waitLeases(n int) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.activeLeases() != n {
		if time.Now().After(deadline) {
			e.t.Fatalf("%d leases active, want %d", e.activeLeases(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestRemoteLeaser runs the gateway against a pharox server through the Go
// client: leases, outcomes and releases all cross the wire.
func TestRemoteLeaser(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnvWith(t, true, nil)
	ups := map[string]*testpeers.Upstream{}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		ups[ip] = startHTTPUpstream(t, ip, true)
		e.add(0, testpeers.Alice(), ups[ip])
	}
	for range 6 {
		if status, _, reason := get(t, e.client, e.tg.Plain.URL+"/"); status != http.StatusOK {
			t.Fatalf("status %d (%s)", status, reason)
		}
	}
	if got := countBy(e.tg.Seen()); len(got) != 3 || got["127.0.0.2"] != 2 {
		t.Fatalf("rotation over the remote service: %v", got)
	}
	if status, from, _ := get(t, e.client, e.tg.TLS.URL+"/"); status != http.StatusOK || from == "" {
		t.Fatalf("CONNECT: %d from %q", status, from)
	}
	e.client.Transport.(*http.Transport).CloseIdleConnections()
	e.tg.Seen()
	for user, want := range map[string]string{"country-zz": "no upstream available", "pool-nowhere": "not found"} {
		if status, _, reason := get(t, e.proxyClient(user), e.tg.Plain.URL+"/"); status != http.StatusServiceUnavailable || !strings.Contains(reason, want) {
			t.Fatalf("%s over the remote service: %d %q, want 503 %q", user, status, reason, want)
		}
	}

	// A sticky session whose upstream dies: every request still succeeds
	// (retried on another upstream; the remote service cannot run the
	// gateway's exclusion predicate), and once the failures have made the
	// dead upstream inactive the session settles on one live upstream.
	c := e.proxyClient("session-r1")
	get(t, c, e.tg.Plain.URL+"/")
	first := e.tg.Seen()[0]
	ups[first].Close()
	c.Transport.(*http.Transport).CloseIdleConnections()
	for range pharox.DefaultOutcomePolicy().FailureThreshold + 3 {
		if status, _, reason := get(t, c, e.tg.Plain.URL+"/"); status != http.StatusOK {
			t.Fatalf("after the upstream died: %d (%s)", status, reason)
		}
	}
	if p := e.proxy(first); p.Status != pharox.StatusInactive {
		t.Fatalf("dead upstream is %s, want inactive from the reported failures", p.Status)
	}
	seen := e.tg.Seen()
	if last := seen[len(seen)-3:]; last[0] != last[1] || last[1] != last[2] || last[0] == first {
		t.Fatalf("session did not settle on one live upstream: %v", seen)
	}
	e.waitNoLeases()
}

func TestMetrics(t *testing.T) {
	testpeers.CheckLeaks(t)
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(c *Config) { c.Registerer = reg })
	live := startHTTPUpstream(t, "127.0.0.2", false)
	dead := startHTTPUpstream(t, "127.0.0.3", false)
	e.add(0, nil, live, dead)
	dead.Close()
	for range 2 {
		get(t, e.client, e.tg.Plain.URL+"/")
	}
	get(t, e.client, e.tg.TLS.URL+"/")
	e.client.Transport.(*http.Transport).CloseIdleConnections()
	get(t, e.proxyClient("pool-none"), e.tg.Plain.URL+"/")
	e.waitNoLeases()
	// Metrics are recorded just before the log line of the tunnel.
	e.waitLog(func(m map[string]any) bool { return m["kind"] == "connect" })

	want := map[string]float64{
		`pharox_gateway_requests_total{code="200",kind="http"}`: 2,
		`pharox_gateway_requests_total{code="503",kind="http"}`: 1,
		`pharox_gateway_tunnels_open{kind="connect"}`:           0,
	}
	got := gather(t, reg)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	// Each try of the dead upstream is one failure, reported and retried.
	tries := float64(e.proxy("127.0.0.3").FailureStreak)
	if tries < 1 || got[`pharox_gateway_upstream_failures_total{reason="connect"}`] != tries || got[`pharox_gateway_retries_total`] != tries {
		t.Errorf("dead upstream tried %v times; failures %v, retries %v", tries,
			got[`pharox_gateway_upstream_failures_total{reason="connect"}`], got[`pharox_gateway_retries_total`])
	}
	// The tunnel is counted once it ended (the client closed it above).
	if got[`pharox_gateway_requests_total{code="200",kind="connect"}`] != 1 {
		t.Errorf("connect requests = %v, want 1", got[`pharox_gateway_requests_total{code="200",kind="connect"}`])
	}
	if got[`pharox_gateway_bytes_total{direction="out"}`] <= 0 || got[`pharox_gateway_bytes_total{direction="in"}`] <= 0 {
		t.Errorf("bytes not counted: %v", got)
	}
	if _, err := New(Config{Leaser: NewLocalLeaser(e.mgr), Registerer: reg}); err == nil {
		t.Error("a second gateway registered its metrics on the same registry")
	}
}

// gather flattens counters and gauges to "name{labels}" → value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := mf.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			}
		}
	}
	return out
}

func TestShutdownClosesTunnelsAndReleases(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, nil)
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	host := strings.TrimPrefix(e.tg.TLS.URL, "https://")
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", host, host)
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	e.waitLeases(1)
	// The idle tunnel does not finish by itself: shutdown waits, then cuts.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.gw.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with an open tunnel: %v, want the deadline", err)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("tunnel still open after shutdown")
	}
	e.waitNoLeases()
	if _, err := net.Dial("tcp", e.addr); err == nil {
		t.Fatal("gateway still accepting after shutdown")
	}
}

func TestTunnelRenewsItsLease(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.LeaseDuration = 2 * time.Second })
	e.add(0, nil, startHTTPUpstream(t, "127.0.0.2", false))
	conn, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(e.tg.TLS.URL, "https://")
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", host, host)
	if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	leases, err := e.store.ListLeases(context.Background(), pharox.LeaseQuery{Status: pharox.LeaseActive})
	if err != nil || len(leases) != 1 {
		t.Fatalf("active leases: %v %v", leases, err)
	}
	first := leases[0].ExpiresAt
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := e.store.GetLease(context.Background(), leases[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if l.Status != pharox.LeaseActive {
			t.Fatalf("tunnel lease ended while the tunnel is open: %s", l.Status)
		}
		if l.ExpiresAt.After(first) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the open tunnel's lease was never renewed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn.Close()
	e.waitNoLeases()
}

func TestTransportCacheEvictsLeastRecentlyUsed(t *testing.T) {
	built := 0
	c := newTransportCache(2, func(*pharox.Proxy) (*http.Transport, error) {
		built++
		return &http.Transport{}, nil
	})
	p := func(port int) *pharox.Proxy {
		return &pharox.Proxy{Host: "10.0.0.1", Port: port, Protocol: pharox.ProtocolHTTP}
	}
	a, _ := c.get(p(1))
	c.get(p(2))
	if again, _ := c.get(p(1)); again != a || built != 2 {
		t.Fatalf("cached transport not reused (built %d)", built)
	}
	c.get(p(3)) // evicts port 2, the least recently used
	if c.order.Len() != 2 {
		t.Fatalf("cache holds %d transports, cap 2", c.order.Len())
	}
	c.get(p(1))
	if built != 3 {
		t.Fatalf("port 1 was evicted instead of port 2 (built %d)", built)
	}
	c.get(p(2))
	if built != 4 {
		t.Fatalf("port 2 still cached after eviction (built %d)", built)
	}
	// Different credentials are a different upstream identity.
	withCred := p(1)
	withCred.Credentials = &pharox.Credentials{User: "u", Password: "x"}
	c.get(withCred)
	if built != 5 {
		t.Fatalf("credentials ignored in the cache key (built %d)", built)
	}
}
