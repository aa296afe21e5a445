package storagetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

// DefaultTargetBenchSize is how many proxies [BenchmarkTargets] stores.
const DefaultTargetBenchSize = 10000

// BenchmarkTargets measures what a target costs an acquisition: on a pool
// of [DefaultTargetBenchSize] proxies (1,000 under -short), half of them,
// chosen at random, cooling down for target T, each iteration acquires and
// releases one lease for T and one without a target, first_available,
// timing each pair on its own (alternating which goes first). It reports pairs/s for both, and
// x-target-cost: the time of a pair for T divided by that of a pair
// without a target, in the same run (the goal is at most 1.5). The store
// must implement [pharox.TargetStore]; the benchmark is skipped otherwise.
//
//	func BenchmarkTargets(b *testing.B) {
//		storagetest.BenchmarkTargets(b, func(b *testing.B) pharox.Storage {
//			s, err := memory.New()
//			if err != nil {
//				b.Fatal(err)
//			}
//			b.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
func BenchmarkTargets(b *testing.B, newStore func(b *testing.B) pharox.Storage) {
	n := DefaultTargetBenchSize
	if testing.Short() {
		n = 1000
	}
	b.Run(fmt.Sprintf("proxies=%d/cooling=50%%", n), func(b *testing.B) {
		s := newStore(b)
		ts := pharox.TargetStore(s)
		ctx := context.Background()
		pool, err := s.CreatePool(ctx, pharox.Pool{Name: "targets"})
		if err != nil {
			b.Fatal(err)
		}
		c, err := s.EnsureConsumer(ctx, "targets")
		if err != nil {
			b.Fatal(err)
		}
		const batch = 1000
		var ids []pharox.Proxy
		for lo := 0; lo < n; lo += batch {
			ps := make([]pharox.Proxy, min(batch, n-lo))
			for j := range ps {
				i := lo + j
				ps[j] = pharox.Proxy{PoolID: pool.ID, Protocol: pharox.ProtocolHTTP, Status: pharox.StatusActive,
					Host: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), Port: 8000 + i%1000}
			}
			out, err := s.AddProxies(ctx, ps)
			if err != nil {
				b.Fatal(err)
			}
			for _, p := range out {
				ids = append(ids, *p)
			}
		}
		const target = "target-t.example"
		p := pharox.DefaultTargetPolicy()
		p.BaseCooldown, p.MaxCooldown = time.Hour, time.Hour
		for _, i := range rand.Perm(n)[:n/2] {
			if _, _, err := ts.ApplyTargetOutcome(ctx, pharox.TargetOutcome{ProxyID: ids[i].ID, Target: target, Kind: pharox.OutcomeBanned}, p); err != nil {
				b.Fatal(err)
			}
		}
		plain := pharox.AcquireRequest{PoolName: pool.Name, ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Minute, Strategy: pharox.FirstAvailable}
		forT := plain
		forT.Target = target
		pair := func(req pharox.AcquireRequest) time.Duration {
			start := time.Now()
			l, err := s.AcquireLease(ctx, req)
			if err != nil {
				b.Fatalf("AcquireLease(target %q): %v", req.Target, err)
			}
			if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
				b.Fatal(err)
			}
			return time.Since(start)
		}
		var none, withT time.Duration
		first := false
		for b.Loop() {
			// Alternate which pair goes first, so neither always pays for
			// what the other left behind (a WAL checkpoint, a cold cache).
			if first = !first; first {
				none += pair(plain)
				withT += pair(forT)
			} else {
				withT += pair(forT)
				none += pair(plain)
			}
		}
		if none > 0 && withT > 0 {
			b.ReportMetric(float64(b.N)/none.Seconds(), "pairs/s-no-target")
			b.ReportMetric(float64(b.N)/withT.Seconds(), "pairs/s-target")
			b.ReportMetric(float64(withT)/float64(none), "x-target-cost")
		}
	})
}
