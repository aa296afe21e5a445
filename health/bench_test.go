package health

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
)

// BenchmarkSweep sweeps b.N proxies (-benchtime 2000x for the record) that
// live on 20 local listeners, half goproxy HTTP proxies and half
// armon/go-socks5 SOCKS5 proxies, several proxies per listener told apart
// by user name, with concurrency 200. As the baseline it then sends b.N
// direct requests to the same target at the same concurrency, each on a
// fresh connection like a probe, and reports both rates and their ratio.
func BenchmarkSweep(b *testing.B) {
	const concurrency, listeners = 200, 20
	tg := newTarget(b)
	addrs := make([]*pharox.Proxy, listeners)
	for i := range addrs {
		if i%2 == 0 {
			addrs[i] = proxyAt(b, startHTTPProxy(b, openProxy), pharox.ProtocolHTTP, nil)
		} else {
			addrs[i] = proxyAt(b, startSOCKS5(b, false), pharox.ProtocolSOCKS5, nil)
		}
	}
	ctx := context.Background()
	store := testfactory.Memory(b)
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	in := make([]pharox.Proxy, b.N)
	for i := range in {
		p := *addrs[i%listeners]
		p.ID, p.PoolID = uuid.Nil, pool.ID
		p.Credentials = &pharox.Credentials{User: fmt.Sprintf("u%d", i)}
		in[i] = p
	}
	if _, err := store.AddProxies(ctx, in); err != nil {
		b.Fatal(err)
	}
	checker, err := NewChecker(CheckerOptions{TargetURL: tg.Plain.URL, Timeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	o := NewOrchestrator(store, checker, OrchestratorOptions{Concurrency: concurrency, FailureThreshold: 1})

	b.ResetTimer()
	s, err := o.SweepPool(ctx, "bench")
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if s.Checked != b.N || s.ByStatus[pharox.StatusActive] != b.N {
		b.Fatalf("sweep checked %d of %d, %d active; failures %v", s.Checked, b.N, s.ByStatus[pharox.StatusActive], s.ByErrorKind)
	}

	// Baseline: the same number of direct requests at the same concurrency.
	started := time.Now()
	var wg sync.WaitGroup
	work := make(chan struct{})
	var failed sync.Map
	for range min(concurrency, b.N) {
		wg.Go(func() {
			for range work {
				if r := checker.CheckDirect(ctx); !r.OK() {
					failed.Store(r.Kind, r.Error)
				}
			}
		})
	}
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	direct := time.Since(started)
	failed.Range(func(k, v any) bool { b.Fatalf("direct request failed: %v %v", k, v); return false })

	b.ReportMetric(s.Rate(), "checks/s")
	b.ReportMetric(float64(b.N)/direct.Seconds(), "direct-req/s")
	b.ReportMetric(s.Duration.Seconds()/direct.Seconds(), "sweep/direct")
	b.ReportMetric(s.Duration.Seconds(), "sweep-s")
	b.ReportMetric(float64(s.Latency.P50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(s.Latency.P99.Microseconds())/1000, "p99-ms")
}
