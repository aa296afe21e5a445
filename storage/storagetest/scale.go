package storagetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

// DefaultScaleSizes are the pool sizes [BenchmarkScale] measures.
var DefaultScaleSizes = []int{1000, 20000, 100000}

// scaleBaseline holds what the smallest free rows of a [BenchmarkScale]
// run measured, by strategy: wall nanoseconds per acquisition and process
// CPU nanoseconds per acquire+release pair.
type scaleBaseline struct {
	mu  sync.Mutex
	ns  map[pharox.Strategy]float64
	cpu map[pharox.Strategy]float64
}

// BenchmarkScale measures how the cost of one acquisition grows with the
// pool: for each pool size (sizes, or [DefaultScaleSizes]), each occupancy
// (every proxy free; every proxy but one busy) and each strategy, it
// acquires and releases one lease per iteration on a pool of exclusive
// proxies (MaxConcurrency 1) and reports ns/acquire, the time of the
// acquisition alone. The one free proxy of the busy pools is the one with
// the highest id, the last in first_available's order (no proxy is
// checked) and the furthest from the start of a round-robin walk.
//
// Each row also reports cpu-ns/op, the CPU time of this process per
// acquire+release pair: steadier than wall time on a shared machine, but
// blind to the work a database server does. The row of the largest pool
// with all but one busy also reports x-smallest-free: its ns/acquire
// divided by that of the smallest pool with every proxy free, measured
// earlier in the same run (and x-smallest-free-cpu, the same for
// cpu-ns/op). A store whose
// strategies are index-backed keeps it small (the target is below 2); one
// that walks busy proxies or sorts candidates shows it growing with the
// pool. Run it whole (-bench 'Scale$' or a pattern that keeps both rows)
// for the ratio.
//
//	func BenchmarkScale(b *testing.B) {
//		storagetest.BenchmarkScale(b, func(b *testing.B) pharox.Storage {
//			s, err := memory.New()
//			if err != nil {
//				b.Fatal(err)
//			}
//			b.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
// With -short and no sizes given it measures 1,000 proxies only.
//
// newStore is called once per pool size and must return a fresh, empty
// store; the busy rows reuse the free rows' pool. Filling a 100,000-proxy
// pool takes as many acquisitions, outside the timing.
func BenchmarkScale(b *testing.B, newStore func(b *testing.B) pharox.Storage, sizes ...int) {
	if len(sizes) == 0 {
		sizes = DefaultScaleSizes
		if testing.Short() {
			// A smoke run (CI's benchmark pass) checks that every row runs;
			// filling 100,000-proxy pools there would take minutes.
			sizes = []int{1000}
		}
	}
	sizes = slices.Sorted(slices.Values(sizes))
	base := &scaleBaseline{ns: map[pharox.Strategy]float64{}, cpu: map[pharox.Strategy]float64{}}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("proxies=%d", n), func(b *testing.B) {
			// One store per size: the busy rows reuse the free rows' pool.
			s := newStore(b)
			req, top := seedScalePool(b, s, n)
			for _, busy := range []bool{false, true} {
				occ := "free"
				if busy {
					occ = "all-but-one-busy"
				}
				b.Run(occ, func(b *testing.B) {
					// A benchmark with sub-benchmarks runs once: the
					// fill happens once, and only if the row is wanted.
					if busy {
						fillScalePool(b, s, req, n, top)
					}
					for _, st := range pharox.AllStrategies {
						b.Run(string(st), func(b *testing.B) {
							r := req
							r.Strategy = st
							ns, cpu := benchAcquire(b, s, r)
							b.ReportMetric(ns, "ns/acquire")
							if cpu > 0 {
								b.ReportMetric(cpu, "cpu-ns/op")
							}
							switch {
							case n == sizes[0] && !busy:
								base.mu.Lock()
								base.ns[st], base.cpu[st] = ns, cpu
								base.mu.Unlock()
							case n == sizes[len(sizes)-1] && busy:
								base.mu.Lock()
								refNS, refCPU := base.ns[st], base.cpu[st]
								base.mu.Unlock()
								if refNS > 0 {
									b.ReportMetric(ns/refNS, "x-smallest-free")
								}
								if refCPU > 0 && cpu > 0 {
									b.ReportMetric(cpu/refCPU, "x-smallest-free-cpu")
								}
							}
						})
					}
				})
			}
		})
	}
}

// seedScalePool stores n exclusive proxies, all free, in pool "scale" and
// returns the request the benchmark repeats and the highest proxy id.
func seedScalePool(b *testing.B, s pharox.Storage, n int) (pharox.AcquireRequest, uuid.UUID) {
	b.Helper()
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "scale"})
	if err != nil {
		b.Fatalf("CreatePool: %v", err)
	}
	c, err := s.EnsureConsumer(ctx, "scale")
	if err != nil {
		b.Fatalf("EnsureConsumer: %v", err)
	}
	const batch = 1000
	var top uuid.UUID
	for lo := 0; lo < n; lo += batch {
		ps := make([]pharox.Proxy, min(batch, n-lo))
		for j := range ps {
			i := lo + j
			ps[j] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255),
				Port: 8000 + i%50000, Protocol: pharox.ProtocolHTTP, MaxConcurrency: ptrutil.Ptr(1)}
		}
		out, err := s.AddProxies(ctx, ps)
		if err != nil {
			b.Fatalf("AddProxies(%d proxies): %v", len(ps), err)
		}
		for _, p := range out {
			if compareID(p.ID, top) > 0 {
				top = p.ID
			}
		}
	}
	req := pharox.AcquireRequest{PoolName: "scale", ConsumerID: c.ID, ConsumerName: c.Name,
		Duration: time.Hour, Strategy: pharox.FirstAvailable}
	return req, top
}

// fillScalePool leases every proxy of the free pool but top, the one with
// the highest id.
func fillScalePool(b *testing.B, s pharox.Storage, req pharox.AcquireRequest, n int, top uuid.UUID) {
	b.Helper()
	ctx := context.Background()
	var (
		mu    sync.Mutex
		onTop uuid.UUID
		taken int
		fail  error
		wg    sync.WaitGroup
	)
	take := func() bool {
		l, err := s.AcquireLease(ctx, req)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			if !errors.Is(err, pharox.ErrNoProxyAvailable) && fail == nil {
				fail = err
			}
			return false
		}
		if l.ProxyID == top {
			onTop = l.ID
		}
		taken++
		return taken <= n
	}
	for range 4 {
		wg.Go(func() {
			for take() {
			}
		})
	}
	wg.Wait()
	for take() {
	}
	if fail != nil || taken != n || onTop == uuid.Nil {
		b.Fatalf("filling the pool: %d of %d proxies leased, error %v", taken, n, fail)
	}
	if _, err := s.ReleaseLease(ctx, onTop, nil); err != nil {
		b.Fatalf("ReleaseLease: %v", err)
	}
}

// benchAcquire runs b.N acquire+release pairs with r and returns the mean
// wall nanoseconds of the acquisitions alone and the process CPU
// nanoseconds per pair (0 where not measured).
func benchAcquire(b *testing.B, s pharox.Storage, r pharox.AcquireRequest) (ns, cpu float64) {
	ctx := context.Background()
	var acquiring time.Duration
	b.ResetTimer()
	cpu0 := CPUTime()
	for range b.N {
		start := time.Now()
		l, err := s.AcquireLease(ctx, r)
		acquiring += time.Since(start)
		if err != nil {
			b.Fatalf("AcquireLease(%s): %v", r.Strategy, err)
		}
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			b.Fatalf("ReleaseLease: %v", err)
		}
	}
	used := CPUTime() - cpu0
	b.StopTimer()
	return float64(acquiring.Nanoseconds()) / float64(b.N), float64(used.Nanoseconds()) / float64(b.N)
}
