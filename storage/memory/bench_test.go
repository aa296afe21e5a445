package memory_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/storage/memory"
	"github.com/pharox/pharox/storage/storagetest"
)

// The benchmarks measure acquire+release pairs through the Manager, which
// is what users call, on pools of exclusive proxies (MaxConcurrency 1):
//
//   - proxies: 1, 1,000 or 100,000 in the pool;
//   - filter: none, or a country that 1% of the proxies have;
//   - occupancy: all free, or all but one leased (all but GOMAXPROCS when
//     parallel, so each worker can hold one), the worst case for a scan;
//   - serial, or parallel with b.RunParallel.
//
// Each reports x-baseline: ns/op divided by the bare minimum work of a pair
// measured in the same process, two critical sections of a mutex-guarded
// map lookup and counter update (take a slot, free it), serial or parallel
// like the benchmark. cpu-ns/op is the process's CPU time per pair (all
// threads, GC included) and x-baseline-cpu its ratio to the baseline's: on
// a shared machine these move much less than wall-clock figures.

const benchPool = "bench"

// benchCountry is held by 1% of the proxies.
const benchCountry = "LU"

var otherCountries = []string{"US", "DE", "FR", "GB", "BR", "JP", "IN"}

// baseline is the cost of the reference pair.
type baseline struct {
	ns, cpu float64 // wall and CPU nanoseconds per pair
}

var (
	baselineOnce                sync.Once
	baselineSerial, baselinePar baseline
)

// referencePair returns 1,024 keys and the reference pair on them: two
// critical sections of a mutex-guarded map lookup and counter update
// (take a slot, free it).
func referencePair() ([]uuid.UUID, func(uuid.UUID)) {
	type slot struct{ n int }
	var mu sync.Mutex
	keys := make([]uuid.UUID, 1024)
	m := make(map[uuid.UUID]*slot, len(keys))
	for i := range keys {
		keys[i] = uuid.New()
		m[keys[i]] = &slot{}
	}
	return keys, func(k uuid.UUID) {
		mu.Lock()
		m[k].n++
		mu.Unlock()
		mu.Lock()
		m[k].n--
		mu.Unlock()
	}
}

// baselines measures the reference pair once per process. It times plain
// loops rather than calling testing.Benchmark, which deadlocks when called
// from inside a running benchmark (both take the testing package's
// benchmark lock).
func baselines() (serial, parallel baseline) {
	baselineOnce.Do(func() {
		keys, pair := referencePair()
		const n = 2_000_000
		for i := range n / 10 { // warm up
			pair(keys[i&1023])
		}
		start, cpu0 := time.Now(), storagetest.CPUTime()
		for i := range n {
			pair(keys[i&1023])
		}
		baselineSerial = baseline{
			ns:  float64(time.Since(start).Nanoseconds()) / n,
			cpu: float64(storagetest.CPUTime()-cpu0) / n,
		}
		workers := runtime.GOMAXPROCS(0)
		var wg sync.WaitGroup
		start, cpu0 = time.Now(), storagetest.CPUTime()
		for w := range workers {
			wg.Go(func() {
				for i := w; i < n; i += workers {
					pair(keys[i&1023])
				}
			})
		}
		wg.Wait()
		baselinePar = baseline{
			ns:  float64(time.Since(start).Nanoseconds()) / n,
			cpu: float64(storagetest.CPUTime()-cpu0) / n,
		}
		fmt.Printf("baseline pair: serial %.1f ns/op (%.1f cpu-ns/op), parallel %.1f ns/op (%.1f cpu-ns/op)\n",
			baselineSerial.ns, baselineSerial.cpu, baselinePar.ns, baselinePar.cpu)
	})
	return baselineSerial, baselinePar
}

// measure runs loop with the timer and CPU clock reset and reports the
// ratios to base.
func measure(b *testing.B, base baseline, loop func()) {
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := storagetest.CPUTime()
	loop()
	cpu := float64(storagetest.CPUTime()-cpu0) / float64(b.N)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/base.ns, "x-baseline")
	if base.cpu > 0 {
		b.ReportMetric(cpu, "cpu-ns/op")
		b.ReportMetric(cpu/base.cpu, "x-baseline-cpu")
	}
}

// fixture is a seeded store. Building 100k proxies with 100k leases takes
// a moment, so the last fixture is kept for the next benchmark that needs
// the same one (runs of one benchmark with growing b.N, mostly).
type fixture struct {
	key   string
	store *memory.Store
	m     *pharox.Manager
}

var lastFixture *fixture

// getFixture returns a store whose pool has size exclusive proxies of which
// free are not leased; the free ones all have benchCountry.
// Benchmarks of different groups get different fixtures: a strategy enables
// its indexes for good, which would slow the others down.
func getFixture(b *testing.B, group string, size, free int) *fixture {
	b.Helper()
	key := fmt.Sprintf("%s/%d/%d", group, size, free)
	if lastFixture != nil && lastFixture.key == key {
		return lastFixture
	}
	lastFixture = nil
	runtime.GC() // drop the previous fixture before building the next
	ctx := context.Background()
	store := testfactory.Memory(b)
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: benchPool})
	if err != nil {
		b.Fatal(err)
	}
	proxies := make([]pharox.Proxy, size)
	for i := range proxies {
		country := otherCountries[i%len(otherCountries)]
		if i%100 == 0 {
			country = benchCountry
		}
		proxies[i] = pharox.Proxy{
			PoolID: pool.ID, Host: fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255), Port: 3128,
			Protocol: pharox.ProtocolHTTP, Country: country, MaxConcurrency: new(1),
		}
	}
	if _, err := store.AddProxies(ctx, proxies); err != nil {
		b.Fatal(err)
	}
	consumer, err := store.EnsureConsumer(ctx, pharox.DefaultConsumerName)
	if err != nil {
		b.Fatal(err)
	}
	if free < size {
		// Lease everything, then release free leases on benchCountry
		// proxies.
		req := pharox.AcquireRequest{PoolName: benchPool, ConsumerID: consumer.ID, Duration: time.Hour, Strategy: pharox.FirstAvailable}
		var inCountry []uuid.UUID
		for {
			l, err := store.AcquireLease(ctx, req)
			if errors.Is(err, pharox.ErrNoProxyAvailable) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if l.Proxy.Country == benchCountry {
				inCountry = append(inCountry, l.ID)
			}
		}
		if len(inCountry) < free {
			b.Fatalf("only %d %s proxies for %d free", len(inCountry), benchCountry, free)
		}
		for _, id := range inCountry[:free] {
			if _, err := store.ReleaseLease(ctx, id, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
	lastFixture = &fixture{key: key, store: store, m: pharox.NewManager(store)}
	return lastFixture
}

func pair(ctx context.Context, b *testing.B, m *pharox.Manager, opts *pharox.AcquireOptions) {
	l, err := m.Acquire(ctx, benchPool, opts)
	if err != nil {
		b.Error(err)
		return
	}
	if _, err := m.Release(ctx, l.ID); err != nil {
		b.Error(err)
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	base, basePar := baselines()
	workers := runtime.GOMAXPROCS(0)
	for _, size := range []int{1, 1_000, 100_000} {
		for _, occupancy := range []string{"free", "all-but-one"} {
			if size == 1 && occupancy != "free" {
				continue // one proxy, nothing to lease around it
			}
			for _, filter := range []string{"none", "country-1pct"} {
				opts := &pharox.AcquireOptions{Duration: time.Hour}
				if filter != "none" {
					opts.Filters = &pharox.Filters{Country: benchCountry}
				}
				name := fmt.Sprintf("proxies=%d/%s/filter=%s", size, occupancy, filter)
				b.Run(name+"/serial", func(b *testing.B) {
					free := size
					if occupancy != "free" {
						free = 1
					}
					f := getFixture(b, "pairs", size, free)
					ctx := context.Background()
					pair(ctx, b, f.m, opts) // build lazy indexes
					measure(b, base, func() {
						for b.Loop() {
							pair(ctx, b, f.m, opts)
						}
					})
				})
				if size < workers {
					continue // one exclusive proxy cannot serve two workers
				}
				b.Run(name+"/parallel", func(b *testing.B) {
					free := size
					if occupancy != "free" {
						free = workers
					}
					f := getFixture(b, "pairs", size, free)
					ctx := context.Background()
					pair(ctx, b, f.m, opts)
					measure(b, basePar, func() {
						b.RunParallel(func(pb *testing.PB) {
							for pb.Next() {
								pair(ctx, b, f.m, opts)
							}
						})
					})
				})
			}
		}
	}
}

// BenchmarkAcquireReleaseStrategy runs each strategy on 100,000 free
// proxies, serially.
func BenchmarkAcquireReleaseStrategy(b *testing.B) {
	base, _ := baselines()
	for _, st := range pharox.AllStrategies {
		b.Run("strategy="+string(st), func(b *testing.B) {
			f := getFixture(b, "strategy="+string(st), 100_000, 100_000)
			ctx := context.Background()
			opts := &pharox.AcquireOptions{Duration: time.Hour, Strategy: st}
			pair(ctx, b, f.m, opts)
			measure(b, base, func() {
				for b.Loop() {
					pair(ctx, b, f.m, opts)
				}
			})
		})
	}
}

// BenchmarkStoreAcquireRelease runs storagetest.Benchmark, the harness
// every store runs: the store called directly, without the Manager's
// validation, defaults and consumer cache, on 100,000 free proxies,
// serially and on GOMAXPROCS workers. Its same-run baseline (map-pair/s,
// x-map-pair) is the reference pair of the other benchmarks: two critical
// sections of a mutex-guarded map lookup and counter update. The busy-pool
// case is BenchmarkScale's all-but-one rows.
func BenchmarkStoreAcquireRelease(b *testing.B) {
	keys, pair := referencePair()
	var next atomic.Uint64
	mapPair := func(context.Context, int) error {
		pair(keys[next.Add(1)&1023])
		return nil
	}
	storagetest.Benchmark(b, func(b *testing.B) pharox.Storage {
		s := testfactory.Memory(b)
		b.Cleanup(func() { s.Close() })
		return s
	}, storagetest.BenchProxies(100_000, 1), storagetest.BenchWorkers(1, runtime.GOMAXPROCS(0)),
		storagetest.BenchWithBaseline(storagetest.BenchBaseline{Name: "map-pair", Op: mapPair}))
}

// BenchmarkScale is the shared scale harness: ns/acquire per strategy, pool
// size and occupancy, with the 100k-all-busy / 1k-free ratio.
func BenchmarkScale(b *testing.B) {
	storagetest.BenchmarkScale(b, func(b *testing.B) pharox.Storage {
		s := testfactory.Memory(b)
		b.Cleanup(func() { s.Close() })
		return s
	})
}

// BenchmarkTargets compares acquire+release pairs for a target with half
// the pool cooling down for it against pairs without a target.
func BenchmarkTargets(b *testing.B) {
	storagetest.BenchmarkTargets(b, func(b *testing.B) pharox.Storage {
		s := testfactory.Memory(b)
		b.Cleanup(func() { _ = s.Close() })
		return s
	})
}
