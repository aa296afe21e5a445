package postgres

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// TestConcurrentFirstUseOfSessionKey starts 8 acquisitions with one new
// session key at once, for each strategy: while the proxy the first of them
// binds has room, all of them must end on it. Before the first use of a key
// was serialised, each read "no binding" from its statement's snapshot,
// SKIP LOCKED spread them over 8 proxies and the last upsert won.
func TestConcurrentFirstUseOfSessionKey(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	_, c := seedPool(t, s, "sticky", 10, 8)
	for _, st := range pharox.AllStrategies {
		t.Run(string(st), func(t *testing.T) {
			key := "k-" + uuid.NewString()
			const n = 8
			leases := make([]*pharox.Lease, n)
			errs := make([]error, n)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					<-start
					leases[i], errs[i] = s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "sticky", ConsumerID: c.ID,
						Duration: time.Minute, Strategy: st, SessionKey: key, SessionTTL: time.Minute})
				})
			}
			close(start)
			wg.Wait()
			proxies := map[uuid.UUID]int{}
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("acquisition %d: %v", i, errs[i])
				}
				proxies[leases[i].ProxyID]++
			}
			if len(proxies) != 1 {
				t.Fatalf("%d concurrent first uses of one session key leased %d different proxies %v; want 1", n, len(proxies), proxies)
			}
			for _, l := range leases {
				if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestStickyHitKeepsRoundRobinPosition: sticky, plain, sticky, plain
// round-robin acquisitions over 3 proxies take proxies 0 1 0 2, as in the
// reference store: the sticky hit does not move the position.
func TestStickyHitKeepsRoundRobinPosition(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, c := seedPool(t, s, "rr", 3, 5)
	ps, err := s.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	index := map[uuid.UUID]int{}
	for i, p := range ps {
		index[p.ID] = i
	}
	var got []int
	for i := range 4 {
		req := pharox.AcquireRequest{PoolName: "rr", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.RoundRobin}
		if i%2 == 0 {
			req.SessionKey, req.SessionTTL = "k", time.Minute
		}
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, index[l.ProxyID])
	}
	// ListProxies orders by id, the round-robin order.
	if want := []int{0, 1, 0, 2}; !slices.Equal(got, want) {
		t.Fatalf("sticky, plain, sticky, plain took proxies %v; want %v", got, want)
	}
}
