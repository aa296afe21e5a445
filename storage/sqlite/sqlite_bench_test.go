package sqlite_test

import (
	"context"
	"errors"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
)

// benchProxies is the pool size of the benchmark.
const benchProxies = 1000

// BenchmarkAcquireRelease measures acquire+release pairs per second on a
// 1,000-proxy pool (every proxy exclusive), serially and with 8 workers,
// for the SQLite store and, as the baseline of the same run, the memory
// store. Compare pairs/s between the memory/ and sqlite/ lines.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, st := range benchStores {
		for _, workers := range []int{1, 8} {
			name := st.name + "/serial"
			if workers > 1 {
				name = st.name + "/workers=8"
			}
			b.Run(name, func(b *testing.B) {
				benchPairs(b, st.open(b), workers)
			})
		}
	}
}

// benchStore is one store the benchmark measures.
type benchStore struct {
	name string
	open func(b *testing.B) pharox.Storage
}

// benchStores lists the stores BenchmarkAcquireRelease runs; the memory
// baseline is added by memory_bench_test.go unless built with -tags
// nomemory.
var benchStores = []benchStore{
	{"sqlite", func(b *testing.B) pharox.Storage { return open(b) }},
}

func benchPairs(b *testing.B, s pharox.Storage, workers int) {
	ctx := context.Background()
	testfactory.PoolWithProxies(b.Context(), b, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("bench")}, benchProxies, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(1)})
	c := testfactory.Consumer(b.Context(), b, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("bench")})
	r := pharox.AcquireRequest{PoolName: "bench", ConsumerID: c.ID, ConsumerName: c.Name,
		Duration: time.Minute, Strategy: pharox.FirstAvailable}
	// Warm up caches and prepared statements outside the timing.
	for range 10 {
		pair(b, ctx, s, r)
	}
	b.ResetTimer()
	cpu0 := processCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		n := b.N / workers
		if w < b.N%workers {
			n++
		}
		wg.Go(func() {
			for range n {
				if !pair(b, ctx, s, r) {
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "pairs/s")
	// CPU per pair is steadier than wall time on a shared machine, and
	// bounds the throughput one core can reach.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/pair")
}

// processCPU returns the user and system CPU time this process used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pair acquires and releases one lease; it reports failures through b.
func pair(b *testing.B, ctx context.Context, s pharox.Storage, r pharox.AcquireRequest) bool {
	l, err := s.AcquireLease(ctx, r)
	if err != nil {
		if errors.Is(err, pharox.ErrNoProxyAvailable) {
			b.Errorf("no proxy available with at most 8 holders on %d proxies", benchProxies)
		} else {
			b.Error(err)
		}
		return false
	}
	if _, err := s.ReleaseLease(ctx, l.ID); err != nil {
		b.Error(err)
		return false
	}
	return true
}

// BenchmarkScale is the shared scale harness: ns/acquire per strategy, pool
// size and occupancy, with the 100k-all-busy / 1k-free ratio.
func BenchmarkScale(b *testing.B) {
	storagetest.BenchmarkScale(b, func(b *testing.B) pharox.Storage { return open(b) })
}
