package redis

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/storage/storagetest"
)

// scaleRounds is how many times each BenchmarkScaleInterleaved row alternates with
// its baseline; the medians are reported.
const scaleRounds = 5

// BenchmarkScale is the shared harness, storagetest.BenchmarkScale:
// ns/acquire per strategy, pool size and occupancy, and the ratio of the
// 100k-all-busy row to the 1k-free row of the same run.
func BenchmarkScale(b *testing.B) {
	storagetest.BenchmarkScale(b, func(b *testing.B) pharox.Storage { return newTestStore(b) })
}

// BenchmarkScaleInterleaved measures the same pairs in a way a shared
// machine's drift does not distort: one acquire+release pair (one caller,
// so each call runs its own script) per strategy on pools of 1,000,
// 20,000 and 100,000 proxies of one slot each, all free and then all but
// one busy. Every row alternates, in scaleRounds rounds, with the same
// strategy on a separate pool of 1,000 free proxies (the baseline,
// measured in the same run and interleaved so that drift hits both) and
// reports us/pair, the baseline's base-us/pair and x-1k-free, the median
// of their per-round quotients: the hot path should not grow with the
// pool or the busy proxies, so every quotient should stay below 2. Run it
// with a fixed count, e.g. -benchtime=2000x.
func BenchmarkScaleInterleaved(b *testing.B) {
	base := newTestStore(b)
	baseReq := scalePool(b, base, 1000)
	for _, n := range []int{1000, 20000, 100000} {
		s := newTestStore(b)
		req := scalePool(b, s, n)
		for _, occ := range []string{"free", "busy"} {
			if occ == "busy" {
				occupyAllButOne(b, s, req, n)
			}
			for _, st := range pharox.AllStrategies {
				b.Run(fmt.Sprintf("proxies=%d/%s/%s", n, occ, st), func(b *testing.B) {
					r, br := req, baseReq
					r.Strategy, br.Strategy = st, st
					var rows, bases, ratios []float64
					done := 0
					for i := range scaleRounds {
						k := b.N / scaleRounds
						if i == scaleRounds-1 {
							k = b.N - done
						}
						done += k
						if k == 0 {
							continue
						}
						b.StopTimer()
						baseNS := scalePairs(b, base, br, k)
						b.StartTimer()
						rowNS := scalePairs(b, s, r, k)
						rows, bases, ratios = append(rows, rowNS), append(bases, baseNS), append(ratios, rowNS/baseNS)
					}
					b.ReportMetric(storagetest.Median(rows)/1000, "us/pair")
					b.ReportMetric(storagetest.Median(bases)/1000, "base-us/pair")
					b.ReportMetric(storagetest.Median(ratios), "x-1k-free")
				})
			}
		}
	}
}

// scalePairs runs k acquire+release pairs of req on s and returns the ns
// per pair.
func scalePairs(b *testing.B, s *Store, req pharox.AcquireRequest, k int) float64 {
	ctx := context.Background()
	start := time.Now()
	for range k {
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			b.Fatal(err)
		}
	}
	return float64(time.Since(start).Nanoseconds()) / float64(k)
}

// scalePool adds a pool of n proxies of one slot each to s and returns a
// one-hour lease request on it.
func scalePool(b *testing.B, s *Store, n int) pharox.AcquireRequest {
	b.Helper()
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "scale"})
	if err != nil {
		b.Fatal(err)
	}
	for start := 0; start < n; start += 1000 {
		ps := make([]pharox.Proxy, 0, 1000)
		for i := start; i < min(start+1000, n); i++ {
			ps = append(ps, pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255),
				Port: 8080, Protocol: pharox.ProtocolHTTP, Country: []string{"US", "DE", "BR", "JP"}[i%4], MaxConcurrency: ptrutil.Ptr(1)})
		}
		if _, err := s.AddProxies(ctx, ps); err != nil {
			b.Fatal(err)
		}
	}
	c, err := s.EnsureConsumer(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	return pharox.AcquireRequest{PoolName: "scale", ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Hour,
		Strategy: pharox.FirstAvailable}
}

// occupyAllButOne leases all but one of the pool's n proxies, a thousand
// per script call.
func occupyAllButOne(b *testing.B, s *Store, req pharox.AcquireRequest, n int) {
	b.Helper()
	ctx := context.Background()
	for left := n - 1; left > 0; {
		k := min(left, 1000)
		reqs := make([]pharox.AcquireRequest, k)
		for i := range reqs {
			reqs[i] = req
		}
		if k == 1 {
			reqs = reqs[:1]
		}
		for _, r := range s.execAcquire(ctx, acquireKey{pool: req.PoolName, strategy: string(req.Strategy)}, reqs) {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
		left -= k
	}
}

// BenchmarkSelectiveFilter measures acquisitions whose filter matches one
// proxy in a pool of 1,000, 20,000 or 100,000 free proxies: an AnyOf of
// countries (indexed: the union of the alternatives' sets) and a NoneOf
// (no index narrows it: the walk covers a pool of 1,000 and finds the
// match, larger pools give up after the scan budget). Each call's time,
// success or failure, is reported as us/call beside base-us/call, an
// unfiltered acquisition on the same pool, interleaved in scaleRounds
// rounds in the same run, and x-unfiltered, the median quotient.
func BenchmarkSelectiveFilter(b *testing.B) {
	shapes := []struct {
		name string
		f    *pharox.Filters
	}{
		{"any_of", &pharox.Filters{AnyOf: []pharox.Filters{{Country: "FR"}, {Country: "XX"}}}},
		{"none_of", &pharox.Filters{NoneOf: []pharox.Filters{{Country: "US"}, {Country: "DE"}, {Country: "BR"}, {Country: "JP"}}}},
	}
	for _, n := range []int{1000, 20000, 100000} {
		s := newTestStore(b)
		req := scalePool(b, s, n)
		ctx := context.Background()
		// The one match: the last proxy in every order, as no proxy has
		// been checked or leased and its id is the greatest.
		pool, err := s.GetPoolByName(ctx, req.PoolName)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, ID: maxID, Host: "127.0.0.1", Port: 1,
			Protocol: pharox.ProtocolHTTP, Country: "FR", MaxConcurrency: ptrutil.Ptr(1)}}); err != nil {
			b.Fatal(err)
		}
		for _, sh := range shapes {
			b.Run(fmt.Sprintf("proxies=%d/%s", n, sh.name), func(b *testing.B) {
				r := req
				r.Filters = sh.f
				var rows, bases, ratios []float64
				done := 0
				for i := range scaleRounds {
					k := b.N / scaleRounds
					if i == scaleRounds-1 {
						k = b.N - done
					}
					done += k
					if k == 0 {
						continue
					}
					b.StopTimer()
					baseNS := scalePairs(b, s, req, k)
					b.StartTimer()
					start := time.Now()
					for range k {
						if l, err := s.AcquireLease(ctx, r); err == nil {
							if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
								b.Fatal(err)
							}
						} else if !errors.Is(err, pharox.ErrNoProxyAvailable) {
							b.Fatal(err)
						}
					}
					rowNS := float64(time.Since(start).Nanoseconds()) / float64(k)
					rows, bases, ratios = append(rows, rowNS), append(bases, baseNS), append(ratios, rowNS/baseNS)
				}
				b.ReportMetric(storagetest.Median(rows)/1000, "us/call")
				b.ReportMetric(storagetest.Median(bases)/1000, "base-us/call")
				b.ReportMetric(storagetest.Median(ratios), "x-unfiltered")
			})
		}
	}
}

// maxID is the greatest proxy id, last in id order.
var maxID = uuid.MustParse("ffffffff-ffff-4fff-bfff-ffffffffffff")
