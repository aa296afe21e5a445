package postgres

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// The store's per-target health runs storagetest's Targets section
// (TestConformance); these tests cover what is particular to this store.

// banForTarget starts a cool-down of each proxy for target.
func banForTarget(t testing.TB, s *Store, target string, ids ...uuid.UUID) {
	t.Helper()
	for _, id := range ids {
		st, _, err := s.ApplyTargetOutcome(context.Background(), pharox.TargetOutcome{ProxyID: id, Target: target, Kind: pharox.OutcomeBanned, StatusCode: 403, Reason: "blocked"}, pharox.DefaultTargetPolicy())
		if err != nil {
			t.Fatal(err)
		}
		if !st.CoolingAt(time.Now()) {
			t.Fatalf("proxy %s is not cooling down for %s after a ban: %+v", id, target, st)
		}
	}
}

// TestBatchWithTargetMatchesSequential runs the batch statement itself
// (as concurrent callers share it) with a target, from a pool where two
// proxies in three cool down for that target: it leases the same proxies,
// in the same order and with the same counts, as acquisitions one after
// another on the reference store, for every deterministic strategy, and
// leaves the requests beyond the proxies not cooling unserved.
func TestBatchWithTargetMatchesSequential(t *testing.T) {
	ctx := context.Background()
	for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed, pharox.RoundRobin} {
		t.Run(string(st), func(t *testing.T) {
			tw := newTwin(t, rand.New(rand.NewPCG(uint64(len(st)), 9)), 12)
			cooling := map[uuid.UUID]bool{}
			for i, id := range tw.proxyIDs {
				if i%3 == 0 {
					continue
				}
				cooling[id] = true
				banForTarget(t, tw.pg, "shop.example", id)
				if _, _, err := tw.mem.ApplyTargetOutcome(ctx, pharox.TargetOutcome{ProxyID: id, Target: "shop.example", Kind: pharox.OutcomeBanned}, pharox.DefaultTargetPolicy()); err != nil {
					t.Fatal(err)
				}
			}
			items := make([]*acquireItem, 16)
			var key acquireBatchKey
			for i := range items {
				req := tw.request(st, true, nil)
				req.Target = "shop.example"
				a := &args{vals: make([]any, batchFixedParams)}
				a.add(req.Target)
				where := filterSQL(req.Filters, "p", a)
				items[i] = &acquireItem{req: &req, leaseID: uuid.New(), where: where, filter: a.vals[batchFixedParams:]}
				key = acquireBatchKey{pool: req.PoolName, strategy: st, target: req.Target}
			}
			served := 0
			for i, got := range tw.pg.execAcquireBatch(ctx, key, items) {
				mreq := tw.request(st, false, nil)
				mreq.Target = "shop.example"
				want, werr := tw.mem.AcquireLease(ctx, mreq)
				switch {
				case errors.Is(werr, pharox.ErrNoProxyAvailable):
					if !errors.Is(got.Err, errNotServed) {
						t.Fatalf("request %d: got %v, %v; the reference has no proxy left", i, got.Val, got.Err)
					}
					continue
				case werr != nil:
					t.Fatal(werr)
				case got.Err != nil:
					t.Fatalf("request %d: %v; the reference leased %s", i, got.Err, want.ProxyID)
				case cooling[got.Val.ProxyID]:
					t.Fatalf("request %d leased proxy %s, cooling down for shop.example", i, got.Val.ProxyID)
				case got.Val.ProxyID != want.ProxyID || got.Val.Proxy.CurrentLeases != want.Proxy.CurrentLeases:
					t.Fatalf("request %d: leased %s (count %d), reference %s (count %d)",
						i, got.Val.ProxyID, got.Val.Proxy.CurrentLeases, want.ProxyID, want.Proxy.CurrentLeases)
				}
				served++
			}
			if served == 0 {
				t.Fatal("the batch served nobody: the test proves nothing")
			}
		})
	}
}
