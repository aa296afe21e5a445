package transport

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
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

// BenchmarkThroughput32 compares a Transport leasing its one proxy from
// an in-memory pool with an http.Transport whose Proxy is fixed to the
// same upstream (goproxy on loopback), both with keep-alive, at 32
// concurrent requests. Both run in the same benchmark, alternating in
// rounds so that drift of the machine hits them alike; it reports the
// Transport's req/s, the baseline's and their ratio (target ≥ 0.9).
// "forward" sends http:// requests that the upstream forwards, "connect"
// https:// requests through CONNECT tunnels.
func BenchmarkThroughput32(b *testing.B) {
	for _, mode := range []string{"forward", "connect"} {
		b.Run(mode, func(b *testing.B) { benchmarkThroughput(b, mode == "connect", 32) })
	}
}

func benchmarkThroughput(b *testing.B, tunnel bool, concurrency int) {
	tg := newTarget(b)
	up := testpeers.StartHTTP(b, "127.0.1.9")
	store := testfactory.Memory(b)
	b.Cleanup(func() { store.Close() })
	ctx := context.Background()
	pool, err := pharox.BootstrapPool(ctx, store, "main", "")
	if err != nil {
		b.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(up.Addr)
	n, _ := strconv.Atoi(port)
	if _, err := pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: host, Port: n, Protocol: pharox.ProtocolHTTP,
		Credentials: testpeers.Alice()}); err != nil {
		b.Fatal(err)
	}
	mgr := pharox.NewManager(store)

	base := defaultBase()
	base.MaxIdleConnsPerHost = 2 * concurrency
	base.TLSClientConfig.RootCAs = tg.RootCAs()
	fixed := base.Clone()
	fixed.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: up.Addr, User: url.UserPassword(testpeers.User, testpeers.Password)})
	rt, err := New(Local(mgr), "main", WithBaseTransport(base), WithLogger(quietLogger()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(fixed.CloseIdleConnections)
	b.Cleanup(rt.CloseIdleConnections)
	target := tg.Plain.URL
	if tunnel {
		target = tg.TLS.URL
	}
	leased, direct := &http.Client{Transport: rt}, &http.Client{Transport: fixed}

	// run sends total requests through c from concurrency goroutines and
	// returns the wall time and the process's CPU time they took.
	run := func(c *http.Client, total int) (wall, cpu time.Duration) {
		var next atomic.Int64
		var wg sync.WaitGroup
		started, cpuStarted := time.Now(), cpuTime()
		for range concurrency {
			wg.Go(func() {
				for next.Add(1) <= int64(total) {
					resp, err := c.Get(target)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		}
		wg.Wait()
		return time.Since(started), cpuTime() - cpuStarted
	}
	// Warm both: connections, the proxy's transport, the store.
	run(direct, 4*concurrency)
	run(leased, 4*concurrency)
	tg.Seen()

	// Sixteen rounds, each running both, in alternating order, so that
	// bursts of load from elsewhere on the machine hit both alike.
	const rounds = 16
	per := max(b.N/rounds, 1)
	var tDirect, tLeased, cDirect, cLeased time.Duration
	direct1 := func() { w, c := run(direct, per); tDirect += w; cDirect += c }
	leased1 := func() { w, c := run(leased, per); tLeased += w; cLeased += c }
	b.ResetTimer()
	for i := range rounds {
		if i%2 == 0 {
			direct1()
			leased1()
		} else {
			leased1()
			direct1()
		}
		tg.Seen() // keep the target's memory flat
	}
	b.StopTimer()
	total := float64(per * rounds)
	b.ReportMetric(total/tLeased.Seconds(), "req/s")
	b.ReportMetric(total/tDirect.Seconds(), "baseline-req/s")
	b.ReportMetric(tDirect.Seconds()/tLeased.Seconds(), "ratio")
	// CPU per request, everything in this process (client, upstream,
	// target): the throughput a saturated machine would give, less
	// disturbed by other processes than wall time.
	b.ReportMetric(cDirect.Seconds()/cLeased.Seconds(), "cpu-ratio")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "procs")
	if s, err := mgr.PoolStats(ctx, "main"); err != nil || s.TotalLeases != 0 {
		b.Fatalf("leases left after the run: %v, %v", s, err)
	}
}

// cpuTime is the CPU time (user and system) this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
