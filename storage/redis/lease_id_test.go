package redis

import (
	"errors"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// TestLeaseIDAcquiresOnce checks AcquireRequest.LeaseID through both
// scripts: acquire.lua (WithMaxBatch(1)) and acquire_many.lua (a batch
// holding the id twice, and the whole batch sent again): the lease gets
// the id, acquiring with it again returns the lease as it is now without a
// second slot, and another consumer or pool gets ErrAlreadyExists.
func TestLeaseIDAcquiresOnce(t *testing.T) {
	for _, batched := range []bool{false, true} {
		name := "single"
		if batched {
			name = "batched"
		}
		t.Run(name, func(t *testing.T) {
			s := newTestStore(t, WithMaxBatch(1))
			ctx := t.Context()
			proxy, req := retryPool(t, s)
			other, err := s.EnsureConsumer(ctx, "other")
			if err != nil {
				t.Fatal(err)
			}
			pool2, err := s.CreatePool(ctx, pharox.Pool{Name: "p2"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool2.ID, Host: "127.0.0.2", Port: 8080, Protocol: pharox.ProtocolHTTP}}); err != nil {
				t.Fatal(err)
			}
			id := uuid.New()
			req.LeaseID = id
			// acquire runs the requests through the script under test and
			// returns each one's lease or error.
			acquire := func(reqs ...pharox.AcquireRequest) ([]*pharox.Lease, []error) {
				ls, errs := make([]*pharox.Lease, len(reqs)), make([]error, len(reqs))
				if !batched {
					for i, r := range reqs {
						ls[i], errs[i] = s.AcquireLease(ctx, r)
					}
					return ls, errs
				}
				if len(reqs) == 1 { // acquire_many serves two or more
					reqs = append(reqs, reqs[0])
				}
				for i, r := range s.execAcquire(ctx, acquireKey{pool: reqs[0].PoolName, strategy: string(reqs[0].Strategy)}, reqs) {
					if i < len(ls) {
						ls[i], errs[i] = r.Val, r.Err
					}
				}
				return ls, errs
			}

			ls, errs := acquire(req, req)
			for i := range ls {
				if errs[i] != nil {
					t.Fatalf("acquisition %d with LeaseID: %v", i, errs[i])
				}
				if ls[i].ID != id || ls[i].Status != pharox.LeaseActive || ls[i].ProxyID != proxy.ID || ls[i].Proxy == nil {
					t.Fatalf("acquisition %d with LeaseID %s returned %+v", i, id, ls[i])
				}
			}
			first := ls[0]
			checkLoad(t, s, proxy, 1)

			ls, errs = acquire(req)
			if errs[0] != nil {
				t.Fatalf("acquire again with the LeaseID: %v", errs[0])
			}
			if got := ls[0]; got.ID != id || !got.AcquiredAt.Equal(first.AcquiredAt) || got.Proxy.CurrentLeases != 1 || got.ConsumerName != req.ConsumerName {
				t.Errorf("acquire again returned %+v, want the first lease %+v", got, first)
			}
			checkLoad(t, s, proxy, 1)

			stranger := req
			stranger.ConsumerID, stranger.ConsumerName = other.ID, other.Name
			elsewhere := req
			elsewhere.PoolName = "p2"
			for what, r := range map[string]pharox.AcquireRequest{"another consumer": stranger, "another pool": elsewhere} {
				if _, errs := acquire(r); !errors.Is(errs[0], pharox.ErrAlreadyExists) {
					t.Errorf("LeaseID of a lease of %s: err = %v, want ErrAlreadyExists", what, errs[0])
				}
			}

			if _, err := s.ReleaseLease(ctx, id, nil); err != nil {
				t.Fatal(err)
			}
			ls, errs = acquire(req)
			if errs[0] != nil {
				t.Fatalf("acquire with the LeaseID of a released lease: %v", errs[0])
			}
			if ls[0].ID != id || ls[0].Status != pharox.LeaseReleased || ls[0].ReleasedAt == nil {
				t.Errorf("acquire with the LeaseID of a released lease returned %+v, want it released", ls[0])
			}
			checkLoad(t, s, proxy, 0)
		})
	}
}

// TestLeaseIDConcurrent checks that concurrent acquisitions with one
// LeaseID, batched together or not, all return the one lease.
func TestLeaseIDConcurrent(t *testing.T) {
	s := newTestStore(t)
	proxy, req := retryPool(t, s)
	req.LeaseID = uuid.New()
	var wg sync.WaitGroup
	ls := make([]*pharox.Lease, 8)
	errs := make([]error, len(ls))
	for i := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ls[i], errs[i] = s.AcquireLease(t.Context(), req)
		}()
	}
	wg.Wait()
	for i := range ls {
		if errs[i] != nil {
			t.Fatalf("acquisition %d: %v", i, errs[i])
		}
		if ls[i].ID != req.LeaseID || !ls[i].AcquiredAt.Equal(ls[0].AcquiredAt) {
			t.Errorf("acquisition %d returned lease %s acquired at %v, want %s at %v", i, ls[i].ID, ls[i].AcquiredAt, req.LeaseID, ls[0].AcquiredAt)
		}
	}
	checkLoad(t, s, proxy, 1)
}
