package storagetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

// DefaultBenchWorkers are the concurrencies [Benchmark] measures.
var DefaultBenchWorkers = []int{1, 8, 32}

// BenchBaseline is a figure a driver measures beside its store in the same
// run of [Benchmark], so that a change in the machine's load hits both
// alike. Exactly one of Store, Op and Rate is set.
type BenchBaseline struct {
	// Name prefixes the metrics: Name+"-pairs/s" for a Store baseline,
	// Name+"/s" for an Op or Rate one, and "x-"+Name for the store's
	// figure divided by the baseline's (pairs per pair for a Store
	// baseline, pairs per OpsPerPair operations for the others).
	Name string
	// Store is another store over the same data (a variant of the store
	// under test: another configuration, a naive query): the harness runs
	// the same pairs on it.
	Store pharox.Storage
	// Op is one operation the harness runs as many times as pairs, on as
	// many workers; worker is the goroutine's index (0..workers-1).
	Op func(ctx context.Context, worker int) error
	// Rate measures an operations-per-second figure itself (for example
	// with an external tool) for the given number of workers; an error
	// leaves the baseline out and is logged once.
	Rate func(ctx context.Context, workers int) (float64, error)
	// OpsPerPair is how many Op or Rate operations one pair compares to
	// (2 for a baseline of single writes: a pair is two); 0 means 1.
	OpsPerPair float64
}

// BenchOption adjusts [Benchmark].
type BenchOption func(*benchConfig)

type benchConfig struct {
	workers   []int
	proxies   int
	maxConc   int
	filters   *pharox.Filters
	rounds    int
	baselines []BenchBaseline
	beforeRun func(b *testing.B)
}

// BenchWorkers sets the concurrencies measured, one sub-benchmark
// "workers=N" each (default [DefaultBenchWorkers]).
func BenchWorkers(workers ...int) BenchOption {
	return func(c *benchConfig) { c.workers = workers }
}

// BenchProxies sets the pool's size (default 1,000) and each proxy's
// max_concurrency (default 1).
func BenchProxies(n, maxConcurrency int) BenchOption {
	return func(c *benchConfig) { c.proxies, c.maxConc = n, maxConcurrency }
}

// BenchFilters makes every acquisition filtered. The pool's proxies are
// spread evenly over the countries US, DE, BR and JP.
func BenchFilters(f *pharox.Filters) BenchOption {
	return func(c *benchConfig) { c.filters = f }
}

// BenchWithBaseline adds a same-run baseline (see [BenchBaseline]).
func BenchWithBaseline(bl BenchBaseline) BenchOption {
	return func(c *benchConfig) { c.baselines = append(c.baselines, bl) }
}

// BenchBeforeEachRun calls fn before every timed run of the store and of
// each baseline, outside the timing (for example to VACUUM what the run
// before left, as autovacuum would).
func BenchBeforeEachRun(fn func(b *testing.B)) BenchOption {
	return func(c *benchConfig) { c.beforeRun = fn }
}

// Benchmark measures acquire+release pairs on the store newStore returns:
// a pool "bench" of 1,000 proxies with max_concurrency 1, one-minute
// first_available leases, one sub-benchmark "workers=N" per concurrency.
// Each sub-benchmark runs its b.N pairs in four rounds, each round also
// running every baseline (alternating which goes first), and reports
//
//	pairs/s       the store's pairs per second
//	cpu-µs/pair   this process's CPU time per pair during the store's runs:
//	              steadier than wall time on a shared machine, blind to the
//	              work a database server does
//
// and each baseline's figures (see [BenchBaseline]). Beside the plain
// pairs, in the same rounds, it runs as many capped pairs: the same
// acquisitions by a consumer whose quota has a MaxConcurrentLeases far
// above what the benchmark holds (so it never refuses, and every
// acquisition loads the quota and counts the consumer's leases), and
// reports
//
//	capped-pairs/s  the capped pairs per second
//	cap/plain       a capped pair's time over a plain one's: what a
//	                consumer cap costs (the goal is at most 1.2)
//
// ns/op covers the baselines and capped pairs too and is not meaningful
// on its own. Run it with a fixed
// count (-benchtime 2000x) so that the baselines run once per round rather
// than once per calibration step.
//
//	func BenchmarkAcquireRelease(b *testing.B) {
//		storagetest.Benchmark(b, func(b *testing.B) pharox.Storage { return openStore(b) })
//	}
//
// newStore is called once; it returns an empty store and registers its
// cleanup with b.Cleanup.
func Benchmark(b *testing.B, newStore func(b *testing.B) pharox.Storage, opts ...BenchOption) {
	cfg := benchConfig{workers: DefaultBenchWorkers, proxies: 1000, maxConc: 1, rounds: 4}
	for _, o := range opts {
		o(&cfg)
	}
	s := newStore(b)
	req := seedBenchPool(b, s, cfg)
	warm := max(slices.Max(cfg.workers), 1)
	capped := seedCappedConsumer(b, s, req, 100*warm)
	// Warm caches, prepared statements and connections outside the timing.
	for _, st := range append([]pharox.Storage{s}, baselineStores(cfg)...) {
		if _, err := Pairs(context.Background(), st, req, warm, 4*warm); err != nil {
			b.Fatalf("warm-up pairs: %v", err)
		}
	}
	if _, err := Pairs(context.Background(), s, capped, warm, 4*warm); err != nil {
		b.Fatalf("warm-up capped pairs: %v", err)
	}
	var rateErr sync.Once
	for _, workers := range cfg.workers {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			ctx := context.Background()
			var storeTime, storeCPU, cappedTime time.Duration
			baseTime := make([]time.Duration, len(cfg.baselines))
			baseRates := make([][]float64, len(cfg.baselines))
			runStore := func(n int) {
				if cfg.beforeRun != nil {
					b.StopTimer()
					cfg.beforeRun(b)
					b.StartTimer()
				}
				cpu0 := CPUTime()
				d, err := Pairs(ctx, s, req, workers, n)
				storeCPU += CPUTime() - cpu0
				storeTime += d
				if err != nil {
					b.Fatalf("pairs on the store (%d workers): %v", workers, err)
				}
			}
			runCapped := func(n int) {
				if cfg.beforeRun != nil {
					b.StopTimer()
					cfg.beforeRun(b)
					b.StartTimer()
				}
				d, err := Pairs(ctx, s, capped, workers, n)
				cappedTime += d
				if err != nil {
					b.Fatalf("capped pairs on the store (%d workers): %v", workers, err)
				}
			}
			runBaseline := func(i, n int) {
				bl := cfg.baselines[i]
				if cfg.beforeRun != nil {
					b.StopTimer()
					cfg.beforeRun(b)
					b.StartTimer()
				}
				var d time.Duration
				var err error
				switch {
				case bl.Store != nil:
					d, err = Pairs(ctx, bl.Store, req, workers, n)
				case bl.Op != nil:
					d, err = runWorkers(workers, n, func(w int) error { return bl.Op(ctx, w) })
				case bl.Rate != nil:
					b.StopTimer()
					var r float64
					r, err = bl.Rate(ctx, workers)
					b.StartTimer()
					if err != nil {
						rateErr.Do(func() { b.Logf("baseline %s left out: %v", bl.Name, err) })
						return
					}
					baseRates[i] = append(baseRates[i], r)
					return
				}
				baseTime[i] += d
				if err != nil {
					b.Fatalf("baseline %s (%d workers): %v", bl.Name, workers, err)
				}
			}
			b.ResetTimer()
			done := 0
			for r := range cfg.rounds {
				n := b.N/cfg.rounds + boolInt(r < b.N%cfg.rounds)
				done += n
				if r%2 == 0 {
					runStore(n)
					runCapped(n)
				}
				for i := range cfg.baselines {
					runBaseline(i, n)
				}
				if r%2 == 1 {
					runCapped(n)
					runStore(n)
				}
			}
			b.StopTimer()
			rate := float64(done) / storeTime.Seconds()
			b.ReportMetric(rate, "pairs/s")
			if storeCPU > 0 {
				b.ReportMetric(float64(storeCPU.Nanoseconds())/1000/float64(done), "cpu-µs/pair")
			}
			b.ReportMetric(float64(done)/cappedTime.Seconds(), "capped-pairs/s")
			b.ReportMetric(cappedTime.Seconds()/storeTime.Seconds(), "cap/plain")
			for i, bl := range cfg.baselines {
				per := bl.OpsPerPair
				if per == 0 {
					per = 1
				}
				switch {
				case bl.Store != nil:
					br := float64(done) / baseTime[i].Seconds()
					b.ReportMetric(br, bl.Name+"-pairs/s")
					b.ReportMetric(rate/br, "x-"+bl.Name)
				case bl.Op != nil:
					br := float64(done) / baseTime[i].Seconds()
					b.ReportMetric(br, bl.Name+"/s")
					b.ReportMetric(rate/(br/per), "x-"+bl.Name)
				case len(baseRates[i]) == cfg.rounds:
					br := Median(baseRates[i])
					b.ReportMetric(br, bl.Name+"/s")
					b.ReportMetric(rate/(br/per), "x-"+bl.Name)
				}
			}
		})
	}
}

// Pairs performs n acquire+release pairs of req on s from workers
// goroutines and returns how long they took; it stops at the first error
// and returns it. It is the loop [Benchmark] times, for drivers' own
// benchmarks.
func Pairs(ctx context.Context, s pharox.Storage, req pharox.AcquireRequest, workers, n int) (time.Duration, error) {
	return runWorkers(workers, n, func(int) error {
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			return fmt.Errorf("AcquireLease: %w", err)
		}
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			return fmt.Errorf("ReleaseLease: %w", err)
		}
		return nil
	})
}

// runWorkers runs op n times in total on workers goroutines and returns
// how long that took and the first error.
func runWorkers(workers, n int, op func(worker int) error) (time.Duration, error) {
	workers = max(workers, 1)
	var next atomic.Int64
	var first atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := op(w); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if p := first.Load(); p != nil {
		return elapsed, *p
	}
	return elapsed, nil
}

// seedBenchPool stores the benchmark's pool and consumer and returns the
// request every pair repeats.
func seedBenchPool(b *testing.B, s pharox.Storage, cfg benchConfig) pharox.AcquireRequest {
	b.Helper()
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "bench"})
	if err != nil {
		b.Fatalf("CreatePool(bench): %v", err)
	}
	countries := []string{"US", "DE", "BR", "JP"}
	const batch = 1000
	for lo := 0; lo < cfg.proxies; lo += batch {
		ps := make([]pharox.Proxy, min(batch, cfg.proxies-lo))
		for j := range ps {
			i := lo + j
			m := cfg.maxConc
			ps[j] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255),
				Port: 8000 + i%50000, Protocol: pharox.ProtocolHTTP, Country: countries[i%len(countries)], MaxConcurrency: &m}
		}
		if _, err := s.AddProxies(ctx, ps); err != nil {
			b.Fatalf("AddProxies(%d proxies): %v", len(ps), err)
		}
	}
	c, err := s.EnsureConsumer(ctx, "bench")
	if err != nil {
		b.Fatalf("EnsureConsumer(bench): %v", err)
	}
	return pharox.AcquireRequest{PoolName: "bench", ConsumerID: c.ID, ConsumerName: c.Name,
		Duration: time.Minute, Strategy: pharox.FirstAvailable, Filters: cfg.filters}
}

// seedCappedConsumer stores a consumer with a quota of limit concurrent
// leases and returns req for it.
func seedCappedConsumer(b *testing.B, s pharox.Storage, req pharox.AcquireRequest, limit int) pharox.AcquireRequest {
	b.Helper()
	ctx := context.Background()
	c, err := s.EnsureConsumer(ctx, "bench-capped")
	if err != nil {
		b.Fatalf("EnsureConsumer(bench-capped): %v", err)
	}
	if _, err := s.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: limit}}); err != nil {
		b.Fatalf("SetQuota(bench-capped, max_concurrent_leases=%d): %v", limit, err)
	}
	req.ConsumerID, req.ConsumerName = c.ID, c.Name
	return req
}

func baselineStores(cfg benchConfig) []pharox.Storage {
	var out []pharox.Storage
	for _, bl := range cfg.baselines {
		if bl.Store != nil {
			out = append(out, bl.Store)
		}
	}
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Median returns the middle value of xs (the upper one of an even count),
// 0 for none: the figure benchmarks report from rounds on a shared machine.
func Median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
