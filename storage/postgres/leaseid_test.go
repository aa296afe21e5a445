package postgres

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// TestAcquireWithLeaseID: an acquisition retried with the lease id it
// chose returns the lease it took, as it is now, and takes no second slot,
// whether the retries run one after another or at once, batched or not.
func TestAcquireWithLeaseID(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
	}{{"batched", nil}, {"unbatched", []Option{WithMaxBatch(1)}}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t, tc.opts...)
			ctx := context.Background()
			pool, c := seedPool(t, s, "idem", 1, 1)
			if _, err := s.CreatePool(ctx, pharox.Pool{Name: "other"}); err != nil {
				t.Fatal(err)
			}
			other, err := s.EnsureConsumer(ctx, "other")
			if err != nil {
				t.Fatal(err)
			}
			id := uuid.New()
			req := pharox.AcquireRequest{PoolName: "idem", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.LeastUsed, LeaseID: id}

			// Concurrent retries: one lease, one slot.
			const n = 8
			leases := make([]*pharox.Lease, n)
			errs := make([]error, n)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() { <-start; leases[i], errs[i] = s.AcquireLease(ctx, req) })
			}
			close(start)
			wg.Wait()
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("acquisition %d with lease id %s: %v", i, id, errs[i])
				}
				if leases[i].ID != id || leases[i].Status != pharox.LeaseActive || leases[i].Proxy == nil || leases[i].Proxy.CurrentLeases != 1 {
					t.Fatalf("acquisition %d = %+v; want the active lease %s on a proxy with 1 lease", i, leases[i], id)
				}
			}
			ps, err := s.ListProxies(ctx, pool.ID)
			if err != nil {
				t.Fatal(err)
			}
			if ps[0].CurrentLeases != 1 {
				t.Fatalf("proxy holds %d leases after %d acquisitions with one lease id; want 1", ps[0].CurrentLeases, n)
			}

			// Released, the retry returns it ended, and takes no slot.
			if _, err := s.ReleaseLease(ctx, id, nil); err != nil {
				t.Fatal(err)
			}
			l, err := s.AcquireLease(ctx, req)
			if err != nil || l.ID != id || l.Status != pharox.LeaseReleased {
				t.Fatalf("acquisition with the id of a released lease = %+v, %v; want that lease, released", l, err)
			}
			if p, err := s.GetProxy(ctx, ps[0].ID); err != nil || p.CurrentLeases != 0 {
				t.Fatalf("proxy after retrying a released lease: %+v, %v; want 0 leases", p, err)
			}

			// Another consumer or pool: the id is taken.
			for _, bad := range []pharox.AcquireRequest{
				{PoolName: "idem", ConsumerID: other.ID, Duration: time.Minute, Strategy: pharox.LeastUsed, LeaseID: id},
				{PoolName: "other", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.LeastUsed, LeaseID: id},
			} {
				if _, err := s.AcquireLease(ctx, bad); !errors.Is(err, pharox.ErrAlreadyExists) {
					t.Fatalf("acquisition with lease id %s from pool %q by consumer %s: %v; want ErrAlreadyExists", id, bad.PoolName, bad.ConsumerID, err)
				}
			}
		})
	}
}
