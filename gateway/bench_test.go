package gateway

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/internal/testpeers"
)

// benchEnv is a target, one upstream (goproxy with credentials) and a
// gateway over an in-memory store holding that upstream (leasing on: every
// request leases the upstream and releases it), plus four clients: one
// straight through the upstream, and three through one more hop chained to
// that upstream: the bare hop (the floor of one more hop), goproxy (a
// widely used Go forward proxy) and the gateway.
type benchEnv struct {
	url                          string
	direct, bare, goproxy, viaGW *http.Client
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	target := newTarget(b).Plain.URL
	up := startHTTPUpstream(b, "127.0.0.2", true)
	store := testfactory.Memory(b)
	b.Cleanup(func() { store.Close() })
	mgr := pharox.NewManager(store)
	ctx := context.Background()
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: "main"})
	if err != nil {
		b.Fatal(err)
	}
	host, portStr, _ := net.SplitHostPort(up.Addr)
	port, _ := strconv.Atoi(portStr)
	if _, err := store.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: host, Port: port,
		Protocol: pharox.ProtocolHTTP, Credentials: testpeers.Alice()}}); err != nil {
		b.Fatal(err)
	}
	gw, err := New(Config{
		Leaser: NewLocalLeaser(mgr), DefaultPool: "main",
		// Access logs stay on, written to nowhere, so their cost counts.
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	ln := testpeers.Listen(b, "127.0.0.1")
	var wg sync.WaitGroup
	wg.Go(func() { gw.Serve(ln) })
	b.Cleanup(func() { gw.Close(); wg.Wait() })

	mk := func(proxy *url.URL) *http.Client {
		tr := &http.Transport{Proxy: http.ProxyURL(proxy), MaxIdleConnsPerHost: 128}
		b.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	upURL := &url.URL{Scheme: "http", Host: up.Addr, User: url.UserPassword(testpeers.User, testpeers.Password)}
	return &benchEnv{
		url:     target + "/small",
		direct:  mk(upURL),
		bare:    mk(&url.URL{Scheme: "http", Host: startBareHop(b, upURL)}),
		goproxy: mk(&url.URL{Scheme: "http", Host: startGoproxyHop(b, upURL)}),
		viaGW:   mk(&url.URL{Scheme: "http", Host: ln.Addr().String()}),
	}
}

func (e *benchEnv) get(b *testing.B, c *http.Client) {
	resp, err := c.Get(e.url)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("status %d: %s", resp.StatusCode, resp.Header.Get(ReasonHeader))
	}
}

// paths returns the clients in the order their figures are reported.
func (e *benchEnv) paths() []*http.Client {
	return []*http.Client{e.direct, e.bare, e.goproxy, e.viaGW}
}

// BenchmarkAddedLatency measures small sequential GETs on the four paths
// (direct, bare hop, goproxy, gateway), rotating which goes first so all
// see the same machine load, and reports each median and the gateway's
// added median over the bare hop (aim: under 50 µs) and over going
// direct.
func BenchmarkAddedLatency(b *testing.B) {
	e := newBenchEnv(b)
	paths := e.paths()
	for range 50 { // warm up connections on every path
		for _, c := range paths {
			e.get(b, c)
		}
	}
	took := make([][]time.Duration, len(paths))
	for i := range took {
		took[i] = make([]time.Duration, 0, b.N)
	}
	b.ResetTimer()
	for i := range b.N {
		for k := range paths {
			p := (i + k) % len(paths)
			t0 := time.Now()
			e.get(b, paths[p])
			took[p] = append(took[p], time.Since(t0))
		}
	}
	b.StopTimer()
	pd, pb, pp, pg := median(took[0]), median(took[1]), median(took[2]), median(took[3])
	b.ReportMetric(float64(pd.Microseconds()), "direct-p50-µs")
	b.ReportMetric(float64(pb.Microseconds()), "bare-p50-µs")
	b.ReportMetric(float64(pp.Microseconds()), "goproxy-p50-µs")
	b.ReportMetric(float64(pg.Microseconds()), "gateway-p50-µs")
	b.ReportMetric(float64((pg - pb).Microseconds()), "added-over-bare-p50-µs")
	b.ReportMetric(float64((pg - pd).Microseconds()), "added-p50-µs")
}

// BenchmarkThroughput64 runs 64 concurrent clients on each of the four
// paths in turn, b.N requests each phase, twice in rotating order so a
// change of machine load hits all, and reports the rates and the
// gateway's and goproxy's ratios to the bare hop (the gateway's aim: 0.9
// or more, and ahead of goproxy) and the gateway's ratio to going direct.
func BenchmarkThroughput64(b *testing.B) {
	e := newBenchEnv(b)
	const clients = 64
	// Each phase's rate, and the process's CPU per request (client, hop,
	// upstream and target together): on a shared machine the rates depend
	// on the neighbours, the CPU per request much less, and the difference
	// between two paths' CPU per request is what their hops cost.
	cpu := make([]float64, 4)
	phase := func(c *http.Client, n int) float64 {
		var next atomic.Int64
		var wg sync.WaitGroup
		start, cpuStart := time.Now(), cpuTime()
		defer func() {
			for i, p := range e.paths() {
				if p == c {
					cpu[i] = (cpuTime() - cpuStart).Seconds() / float64(n)
				}
			}
		}()
		for range clients {
			wg.Go(func() {
				for next.Add(1) <= int64(n) {
					e.get(b, c)
				}
			})
		}
		wg.Wait()
		return float64(n) / time.Since(start).Seconds()
	}
	paths := e.paths()
	for _, c := range paths { // warm up every path's connection pools
		phase(c, clients*4)
	}
	cpuSum := make([]float64, len(paths))
	b.ResetTimer()
	// Each phase runs at least one request per client.
	n := max(b.N/2, clients)
	rate := make([]float64, len(paths))
	for round := range 2 {
		for k := range paths {
			p := (round*2 + k) % len(paths)
			rate[p] += phase(paths[p], n) / 2
			cpuSum[p] += cpu[p] / 2
		}
	}
	b.StopTimer()
	direct, bare, gp, viaGW := rate[0], rate[1], rate[2], rate[3]
	b.ReportMetric(direct, "direct-req/s")
	b.ReportMetric(bare, "bare-req/s")
	b.ReportMetric(gp, "goproxy-req/s")
	b.ReportMetric(viaGW, "gateway-req/s")
	b.ReportMetric(viaGW/bare, "x_bare")
	b.ReportMetric(gp/bare, "goproxy-x_bare")
	b.ReportMetric(viaGW/direct, "x_direct")
	b.ReportMetric(cpuSum[3]*1e6, "gateway-cpu-us/req")
	b.ReportMetric(cpuSum[1]*1e6, "bare-cpu-us/req")
	b.ReportMetric(cpuSum[2]*1e6, "goproxy-cpu-us/req")
	// The ratios an idle machine would show, from CPU per request.
	b.ReportMetric(cpuSum[1]/cpuSum[3], "x_bare_cpu")
	b.ReportMetric(cpuSum[1]/cpuSum[2], "goproxy-x_bare_cpu")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkMeteringThroughput64 runs 64 concurrent clients through two
// gateways over the same store and upstream, one metering (the default)
// and one with DisableMetering, b.N small GETs each, in phases that
// alternate between them (ABBA) so that a change of the machine's load
// hits both alike. It reports both rates and their ratio (the aim:
// 0.95 or more), and the ratio of the process's CPU time per request,
// which the machine's neighbours disturb less.
func BenchmarkMeteringThroughput64(b *testing.B) {
	target := newTarget(b).Plain.URL + "/small"
	up := startHTTPUpstream(b, "127.0.0.2", true)
	store := testfactory.Memory(b)
	b.Cleanup(func() { store.Close() })
	mgr := pharox.NewManager(store)
	ctx := context.Background()
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: "main"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := store.AddProxies(ctx, []pharox.Proxy{up.Proxy(pool.ID, 0, testpeers.Alice())}); err != nil {
		b.Fatal(err)
	}
	start := func(disable bool) *http.Client {
		gw, err := New(Config{Leaser: NewLocalLeaser(mgr), DefaultPool: "main", DisableMetering: disable,
			Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		ln := testpeers.Listen(b, "127.0.0.1")
		var wg sync.WaitGroup
		wg.Go(func() { gw.Serve(ln) })
		b.Cleanup(func() { gw.Close(); wg.Wait() })
		tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: ln.Addr().String()}), MaxIdleConnsPerHost: 128}
		b.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	paths := [2]*http.Client{start(false), start(true)} // metered, unmetered
	e := &benchEnv{url: target}
	const clients = 64
	var ms runtime.MemStats
	mallocs := func() uint64 { runtime.ReadMemStats(&ms); return ms.Mallocs }
	var allocs [2]uint64
	phase := func(c *http.Client, n int) (wall, cpu time.Duration, objects uint64) {
		var next atomic.Int64
		var wg sync.WaitGroup
		a0 := mallocs()
		t0, c0 := time.Now(), cpuTime()
		for range clients {
			wg.Go(func() {
				for next.Add(1) <= int64(n) {
					e.get(b, c)
				}
			})
		}
		wg.Wait()
		wall, cpu = time.Since(t0), cpuTime()-c0
		return wall, cpu, mallocs() - a0
	}
	for _, c := range paths { // warm up both paths' connection pools
		phase(c, clients*4)
	}
	const rounds = 16
	n := max(b.N/rounds, clients)
	var wall, cpu [2]time.Duration
	b.ResetTimer()
	for round := range rounds {
		for k := range 2 {
			p := (round/2 + k) % 2 // ABBA: metered first in half the rounds
			w, c, a := phase(paths[p], n)
			wall[p] += w
			cpu[p] += c
			allocs[p] += a
		}
	}
	b.StopTimer()
	if rows, err := mgr.Usage(ctx, pharox.UsageQuery{GroupBy: pharox.UsageByPool}); err != nil || len(rows) != 1 || rows[0].Requests < int64(rounds*n) {
		b.Fatalf("metered gateway's usage: %v, %v; want at least %d requests", rows, err, rounds*n)
	}
	reqs := float64(rounds * n)
	b.ReportMetric(reqs/wall[0].Seconds(), "metered-req/s")
	b.ReportMetric(reqs/wall[1].Seconds(), "unmetered-req/s")
	b.ReportMetric(wall[1].Seconds()/wall[0].Seconds(), "x_unmetered")
	b.ReportMetric(cpu[0].Seconds()/reqs*1e6, "metered-cpu-us/req")
	b.ReportMetric(cpu[1].Seconds()/reqs*1e6, "unmetered-cpu-us/req")
	b.ReportMetric(cpu[1].Seconds()/cpu[0].Seconds(), "x_unmetered_cpu")
	// Objects allocated per request by the whole process (clients, gateway,
	// upstream, target): steady whatever the machine's load.
	b.ReportMetric(float64(allocs[0])/reqs, "metered-allocs/req")
	b.ReportMetric(float64(allocs[1])/reqs, "unmetered-allocs/req")
}
