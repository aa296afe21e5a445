package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
	"github.com/pharox/pharox/storage/sqlite"
)

// A multi-process test re-executes its own test binary, running only
// itself, as gateway processes over one SQLite file; the environment tells
// a copy that it is a gateway and which file to lease from.
const (
	// mpEnvChild holds the name of the test the child serves for; its
	// presence marks a child.
	mpEnvChild = "PHAROX_GATEWAY_MP_CHILD"
	// mpEnvStore holds the SQLite file the child leases from.
	mpEnvStore = "PHAROX_GATEWAY_MP_STORE"
)

// mpAddrPrefix starts the stdout line on which a child announces its
// HTTP and SOCKS5 addresses.
const mpAddrPrefix = "PHAROX-GATEWAY-MP-ADDRS "

// mpGatewayIfChild serves as a child gateway process and reports true when
// this process is one; the test must then return.
func mpGatewayIfChild(t *testing.T) bool {
	name := os.Getenv(mpEnvChild)
	if name == "" {
		return false
	}
	if name != t.Name() {
		t.Skipf("gateway child for %s, not %s", name, t.Name())
	}
	mpServeGateway(t, os.Getenv(mpEnvStore))
	return true
}

// mpServeGateway runs a gateway over the SQLite file at path on
// 127.0.0.1:0 (HTTP and SOCKS5) until its stdin closes (the parent closes
// it, or dies) or it is signalled, then shuts down gracefully, releasing
// every lease with its usage.
func mpServeGateway(t *testing.T, path string) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	store, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatalf("gateway child: open %s: %v", path, err)
	}
	defer store.Close()
	// Warnings and errors go to stderr, which the parent shows on failure.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	gw, err := New(Config{Leaser: NewLocalLeaser(pharox.NewManager(store, pharox.WithLogger(logger))),
		Logger: logger, DisableAccessLog: true})
	if err != nil {
		t.Fatalf("gateway child: %v", err)
	}
	hln, sln := testpeers.Listen(t, "127.0.0.1"), testpeers.Listen(t, "127.0.0.1")
	var wg sync.WaitGroup
	wg.Go(func() { _ = gw.Serve(hln) })
	wg.Go(func() { _ = gw.ServeSOCKS(sln) })
	// Printed, not logged: the parent reads stdout.
	fmt.Printf("\n%s%s %s\n", mpAddrPrefix, hln.Addr(), sln.Addr())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := gw.Shutdown(sctx); err != nil {
		t.Errorf("gateway child: shutdown: %v", err)
	}
	wg.Wait()
}

// mpGateway is a running child gateway process.
type mpGateway struct {
	name        string
	http, socks string
	cmd         *exec.Cmd
	stdin       io.WriteCloser
	out         *testpeers.OutputWatcher
	done        chan struct{} // closed when the process has been waited for
	err         error         // Wait's result, once done is closed
}

// mpStartGateway starts a gateway process over the SQLite file at path and
// waits for its addresses. The process is killed when t ends if it is
// still running.
func mpStartGateway(t *testing.T, name, path string) *mpGateway {
	t.Helper()
	pattern := "^" + regexp.QuoteMeta(t.Name()) + "$"
	cmd := exec.Command(os.Args[0], "-test.run="+pattern, "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), mpEnvChild+"="+t.Name(), mpEnvStore+"="+path)
	g := &mpGateway{name: name, cmd: cmd, out: testpeers.NewOutputWatcher(mpAddrPrefix), done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = g.out, g.out
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("%s: stdin pipe: %v", name, err)
	}
	g.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: start: %v", name, err)
	}
	go func() {
		g.err = cmd.Wait()
		close(g.done)
	}()
	t.Cleanup(g.kill)
	select {
	case addrs := <-g.out.Found():
		g.http, g.socks, _ = strings.Cut(addrs, " ")
	case <-g.done:
		t.Fatalf("%s exited before serving: %v\n%s", name, g.err, g.output())
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s did not announce its addresses within 2 minutes\n%s", name, g.output())
	}
	return g
}

// stop closes the child's stdin, which shuts it down gracefully, and
// reports an error unless it exits cleanly in time.
func (g *mpGateway) stop() error {
	_ = g.stdin.Close()
	select {
	case <-g.done:
	case <-time.After(time.Minute):
		g.kill()
		return fmt.Errorf("%s did not stop within a minute of its stdin closing; killed\n%s", g.name, g.output())
	}
	if g.err != nil {
		return fmt.Errorf("%s exited with %v\n%s", g.name, g.err, g.output())
	}
	return nil
}

func (g *mpGateway) kill() {
	select {
	case <-g.done:
		return
	default:
	}
	_ = g.cmd.Process.Kill()
	<-g.done
}

func (g *mpGateway) output() string {
	s := g.out.String()
	if len(s) > 4000 {
		s = "..." + s[len(s)-4000:]
	}
	return s
}

// client is an HTTP client using the gateway as its proxy with user as
// the proxy user name.
func (g *mpGateway) client(t *testing.T, user string) *http.Client {
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: g.http, User: url.UserPassword(user, "x")})}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// TestMultiProcessMetering runs three gateway processes over one SQLite
// file. Clients move known byte counts through all of them at once: plain
// HTTP requests through pool "fwd", whose upstreams count the bytes on
// their connections from the gateways, and CONNECT and SOCKS5 tunnels
// through pool "tun", whose payload the clients count. The store's usage
// totals must equal those independent counts to the byte, per pool and
// per upstream. Then a consumer cap of 2, set in the store, holds across
// the processes: with two tunnels open through two gateways, a request
// through the third is answered 429 until one of them closes.
func TestMultiProcessMetering(t *testing.T) {
	if mpGatewayIfChild(t) {
		return
	}
	if testing.Short() {
		t.Skip("starts gateway processes")
	}
	testpeers.CheckLeaks(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "pharox.db")
	store, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	mgr := pharox.NewManager(store)
	fwd, err := store.CreatePool(ctx, pharox.Pool{Name: "fwd"})
	if err != nil {
		t.Fatal(err)
	}
	tun, err := store.CreatePool(ctx, pharox.Pool{Name: "tun"})
	if err != nil {
		t.Fatal(err)
	}
	// The forwarding upstreams count the bytes on every connection.
	counted := map[uuid.UUID]*testpeers.CountingListener{}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		ln := testpeers.Counting(testpeers.Listen(t, ip))
		up := testpeers.StartGoproxy(t, ip, testpeers.HTTPOptions{Listener: ln})
		out, err := store.AddProxies(ctx, []pharox.Proxy{up.Proxy(fwd.ID, 0, testpeers.Alice())})
		if err != nil {
			t.Fatal(err)
		}
		counted[out[0].ID] = ln
	}
	for _, up := range []*testpeers.Upstream{startHTTPUpstream(t, "127.0.0.4", false), testpeers.StartSOCKS5(t, "127.0.0.5")} {
		cred := testpeers.Alice()
		if up.Proto == pharox.ProtocolHTTP {
			cred = nil
		}
		if _, err := store.AddProxies(ctx, []pharox.Proxy{up.Proxy(tun.ID, 0, cred)}); err != nil {
			t.Fatal(err)
		}
	}
	site := startBytesTarget(t).Plain.URL
	sized := startSizedTarget(t)

	var gws []*mpGateway
	for i := range 3 {
		gws = append(gws, mpStartGateway(t, fmt.Sprintf("gateway %d", i), path))
	}

	// Every gateway at once, several clients each.
	var requests, tunnels, sent, received atomic.Int64
	var wg sync.WaitGroup
	for gi, g := range gws {
		hc := g.client(t, "pool-fwd")
		for w := range 3 {
			wg.Go(func() {
				k := gi*3 + w
				for i := range 6 {
					var err error
					if i%3 == 2 {
						err = testpeers.PostEcho(hc, site, 1000*k+7*i)
					} else {
						err = testpeers.GetBytes(hc, site, 20000*k+i*i*999)
					}
					if err != nil {
						t.Errorf("%s: %v", g.name, err)
						return
					}
					requests.Add(1)
				}
				for i := range 4 {
					n, m := int64(5000*k+i), int64(30000*i+k)
					var c net.Conn
					var r io.Reader
					var err error
					if (k+i)%2 == 0 {
						c, r, err = dialConnect(g.http, "pool-tun", sized)
					} else {
						c, err = dialSOCKS(g.socks, "pool-tun", sized)
						r = c
					}
					if err == nil {
						var out, in int64
						out, in, err = exchange(c, r, n, m)
						sent.Add(out)
						received.Add(in)
					}
					if err != nil {
						t.Errorf("%s: %v", g.name, err)
						return
					}
					tunnels.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	mpWaitNoLeases(t, store, "fwd", "tun")

	// The totals the store aggregated from the gateways' releases.
	var fwdRead, fwdWritten int64
	for _, ln := range counted {
		fwdRead += ln.Read()
		fwdWritten += ln.Written()
	}
	byPool := mpUsage(t, mgr, pharox.UsageByPool)
	want := map[string]pharox.UsageRow{
		fwd.ID.String(): {Leases: requests.Load(), Usage: pharox.Usage{Requests: requests.Load(), BytesSent: fwdRead, BytesReceived: fwdWritten}},
		tun.ID.String(): {Leases: tunnels.Load(), Usage: pharox.Usage{Requests: tunnels.Load(), BytesSent: sent.Load(), BytesReceived: received.Load()}},
	}
	for key, w := range want {
		if got := byPool[key]; got.Leases != w.Leases || got.Usage != w.Usage {
			t.Errorf("pool %s: usage %d leases %+v; counted independently %d leases %+v", key, got.Leases, got.Usage, w.Leases, w.Usage)
		}
	}
	byProxy := mpUsage(t, mgr, pharox.UsageByProxy)
	for id, ln := range counted {
		if got := byProxy[id.String()]; got.BytesSent != ln.Read() || got.BytesReceived != ln.Written() {
			t.Errorf("upstream %s: usage %+v; it counted %d bytes read, %d written", id, got.Usage, ln.Read(), ln.Written())
		}
	}
	t.Logf("%d requests (%d bytes out, %d in) and %d tunnels (%d bytes out, %d in) through %d gateway processes",
		requests.Load(), fwdRead, fwdWritten, tunnels.Load(), sent.Load(), received.Load(), len(gws))

	// A consumer cap holds across the gateways.
	consumer, err := store.EnsureConsumer(ctx, DefaultConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 2}}); err != nil {
		t.Fatal(err)
	}
	c1, r1 := connectTunnel(t, gws[0].http, "pool-tun", sized)
	c2, err := dialSOCKS(gws[1].socks, "pool-tun", sized)
	if err != nil {
		t.Fatal(err)
	}
	hc := gws[2].client(t, "pool-fwd")
	resp, err := hc.Get(site + "/bytes?n=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" ||
		!strings.Contains(resp.Header.Get(ReasonHeader), "max_concurrent_leases=2") {
		t.Fatalf("third lease of a consumer capped at 2, through a third gateway: %d, Retry-After %q, %q; want 429",
			resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get(ReasonHeader))
	}
	mustExchange(t, c1, r1, 1, 1)
	mpWaitLeases(t, store, "tun", 1)
	if err := testpeers.GetBytes(hc, site, 1); err != nil {
		t.Fatalf("under the cap again: %v", err)
	}
	mustExchange(t, c2, c2, 1, 1)
	mpWaitNoLeases(t, store, "fwd", "tun")

	for _, g := range gws {
		if err := g.stop(); err != nil {
			t.Error(err)
		}
	}
}

// mpUsage is the store's usage grouped by g, by key.
func mpUsage(t *testing.T, mgr *pharox.Manager, g pharox.UsageGroup) map[string]pharox.UsageRow {
	t.Helper()
	rows, err := mgr.Usage(context.Background(), pharox.UsageQuery{GroupBy: g})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]pharox.UsageRow{}
	for _, r := range rows {
		out[r.Key] = r
	}
	return out
}

// mpWaitLeases waits until pool has n active leases: the gateways release
// a moment after their clients are done.
func mpWaitLeases(t *testing.T, store pharox.Storage, pool string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := store.GetPoolStats(context.Background(), pool)
		if err != nil {
			t.Fatal(err)
		}
		if s.TotalLeases == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool %s: %d active leases, want %d", pool, s.TotalLeases, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mpWaitNoLeases(t *testing.T, store pharox.Storage, pools ...string) {
	t.Helper()
	for _, p := range pools {
		mpWaitLeases(t, store, p, 0)
	}
}
