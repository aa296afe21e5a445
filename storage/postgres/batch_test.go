package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/storage/memory"
)

// twin is a PostgreSQL store and a memory store holding the same pool,
// consumer and proxies (with the same ids), so that the memory store, the
// reference implementation, can say what a sequence of acquisitions must
// return.
type twin struct {
	pg       *Store
	mem      *memory.Store
	pgCons   *pharox.Consumer
	memCons  *pharox.Consumer
	proxyIDs []uuid.UUID
}

func newTwin(t *testing.T, r *rand.Rand, proxies int) *twin {
	t.Helper()
	ctx := context.Background()
	tw := &twin{pg: newTestStore(t), mem: testfactory.Memory(t)}
	specs := make([]pharox.Proxy, proxies)
	for i := range specs {
		specs[i] = pharox.Proxy{
			ID:   uuid.New(),
			Host: fmt.Sprintf("10.0.0.%d", i+1), Port: 8080, Protocol: pharox.ProtocolHTTP,
			Country: []string{"US", "DE"}[r.IntN(2)], MaxConcurrency: ptrutil.Ptr(1 + r.IntN(3)),
		}
		tw.proxyIDs = append(tw.proxyIDs, specs[i].ID)
	}
	for _, st := range []pharox.Storage{tw.pg, tw.mem} {
		pool, err := st.CreatePool(ctx, pharox.Pool{Name: "twin"})
		if err != nil {
			t.Fatal(err)
		}
		c, err := st.EnsureConsumer(ctx, "worker")
		if err != nil {
			t.Fatal(err)
		}
		if st == pharox.Storage(tw.pg) {
			tw.pgCons = c
		} else {
			tw.memCons = c
		}
		in := make([]pharox.Proxy, len(specs))
		for i, p := range specs {
			p.PoolID = pool.ID
			p.MaxConcurrency = ptrutil.Ptr(*p.MaxConcurrency)
			in[i] = p
		}
		if _, err := st.AddProxies(ctx, in); err != nil {
			t.Fatal(err)
		}
		for i, p := range specs {
			if i%4 == 3 {
				if _, err := st.SetProxyStatus(ctx, p.ID, pharox.StatusSlow); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return tw
}

func (tw *twin) request(st pharox.Strategy, pg bool, f *pharox.Filters) pharox.AcquireRequest {
	c := tw.memCons
	if pg {
		c = tw.pgCons
	}
	return pharox.AcquireRequest{PoolName: "twin", ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Hour, Strategy: st, Filters: f}
}

// items builds a batch of n acquisitions for execAcquireBatch.
func (tw *twin) items(t *testing.T, st pharox.Strategy, f *pharox.Filters, n int) (acquireBatchKey, []*acquireItem) {
	t.Helper()
	var key acquireBatchKey
	items := make([]*acquireItem, n)
	for i := range items {
		req := tw.request(st, true, f)
		if err := req.Validate(); err != nil {
			t.Fatal(err)
		}
		a := &args{vals: make([]any, batchFixedParams)}
		where := filterSQL(req.Filters, "p", a)
		items[i] = &acquireItem{req: &req, leaseID: uuid.New(), where: where, filter: a.vals[batchFixedParams:]}
		key = acquireBatchKey{pool: req.PoolName, strategy: req.Strategy.OrDefault(), filter: where + fmt.Sprintf("%#v", items[i].filter)}
	}
	return key, items
}

// TestBatchAcquireMatchesSequential: a batch statement of n acquisitions
// leases the same proxies, in the same order and with the same counts, as
// n acquisitions one after another on the reference store, for every
// deterministic strategy, with and without a filter, from a pool where
// earlier leases left uneven counts; afterwards both stores agree on the
// next acquisition too (counters and the round-robin position moved
// alike).
func TestBatchAcquireMatchesSequential(t *testing.T) {
	ctx := context.Background()
	for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed, pharox.RoundRobin} {
		for _, f := range []*pharox.Filters{nil, {Country: "DE"}} {
			t.Run(fmt.Sprintf("%s/filter=%v", st, f != nil), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(len(st)), 7))
				tw := newTwin(t, r, 12)
				// History: leases taken in sequence on both, some released.
				var held [][2]uuid.UUID
				for i := range 9 {
					pl, err := tw.pg.AcquireLease(ctx, tw.request(st, true, nil))
					if err != nil {
						t.Fatal(err)
					}
					ml, err := tw.mem.AcquireLease(ctx, tw.request(st, false, nil))
					if err != nil {
						t.Fatal(err)
					}
					if pl.ProxyID != ml.ProxyID {
						t.Fatalf("history acquisition %d: postgres leased %s, reference %s", i, pl.ProxyID, ml.ProxyID)
					}
					held = append(held, [2]uuid.UUID{pl.ID, ml.ID})
				}
				for _, i := range []int{1, 4, 6} {
					if _, err := tw.pg.ReleaseLease(ctx, held[i][0], nil); err != nil {
						t.Fatal(err)
					}
					if _, err := tw.mem.ReleaseLease(ctx, held[i][1], nil); err != nil {
						t.Fatal(err)
					}
				}

				// More requests than free slots, so the tail goes unserved.
				key, items := tw.items(t, st, f, 30)
				res := tw.pg.execAcquireBatch(ctx, key, items)
				served := 0
				for i, got := range res {
					want, werr := tw.mem.AcquireLease(ctx, tw.request(st, false, f))
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
					}
					served++
					if got.Val.ProxyID != want.ProxyID || got.Val.Proxy.CurrentLeases != want.Proxy.CurrentLeases {
						t.Fatalf("request %d: leased %s (count %d), reference %s (count %d)",
							i, got.Val.ProxyID, got.Val.Proxy.CurrentLeases, want.ProxyID, want.Proxy.CurrentLeases)
					}
					if got.Val.ID != items[i].leaseID || got.Val.ConsumerID != tw.pgCons.ID || got.Val.Status != pharox.LeaseActive ||
						got.Val.ExpiresAt.Sub(got.Val.AcquiredAt) != time.Hour {
						t.Fatalf("request %d: lease %+v", i, got.Val)
					}
					stored, err := tw.pg.GetLease(ctx, got.Val.ID)
					if err != nil || stored.ProxyID != got.Val.ProxyID || !stored.AcquiredAt.Equal(got.Val.AcquiredAt) {
						t.Fatalf("request %d: stored lease %+v, %v; returned %+v", i, stored, err, got.Val)
					}
				}
				if served == 0 {
					t.Fatal("the batch served nobody: the test proves nothing")
				}
				for _, id := range tw.proxyIDs {
					pp, err := tw.pg.GetProxy(ctx, id)
					if err != nil {
						t.Fatal(err)
					}
					mp, err := tw.mem.GetProxy(ctx, id)
					if err != nil {
						t.Fatal(err)
					}
					if pp.CurrentLeases != mp.CurrentLeases {
						t.Fatalf("proxy %s holds %d leases, reference %d", id, pp.CurrentLeases, mp.CurrentLeases)
					}
				}
				// Free a few slots; the next acquisition must agree.
				for _, i := range []int{0, 5} {
					tw.pg.ReleaseLease(ctx, held[i][0], nil)
					tw.mem.ReleaseLease(ctx, held[i][1], nil)
				}
				pl, err := tw.pg.AcquireLease(ctx, tw.request(st, true, nil))
				if err != nil {
					t.Fatal(err)
				}
				ml, err := tw.mem.AcquireLease(ctx, tw.request(st, false, nil))
				if err != nil {
					t.Fatal(err)
				}
				if pl.ProxyID != ml.ProxyID {
					t.Fatalf("acquisition after the batch: postgres leased %s, reference %s", pl.ProxyID, ml.ProxyID)
				}
			})
		}
	}
}

// TestBatchAcquireRandomAndErrors: a Random batch leases valid, distinct
// proxies while enough have a free slot; an unknown consumer fails alone;
// an unknown pool fails every request.
func TestBatchAcquireRandomAndErrors(t *testing.T) {
	ctx := context.Background()
	tw := newTwin(t, rand.New(rand.NewPCG(1, 2)), 12)
	key, items := tw.items(t, pharox.Random, nil, 5)
	items[2].req.ConsumerID = uuid.New()
	res := tw.pg.execAcquireBatch(ctx, key, items)
	seen := map[uuid.UUID]bool{}
	for i, r := range res {
		if i == 2 {
			if !errors.Is(r.Err, pharox.ErrConsumerNotFound) {
				t.Fatalf("unknown consumer: %v, %v; want ErrConsumerNotFound", r.Val, r.Err)
			}
			continue
		}
		if r.Err != nil {
			t.Fatalf("request %d: %v", i, r.Err)
		}
		if seen[r.Val.ProxyID] {
			t.Fatalf("random batch leased %s twice while other proxies were free", r.Val.ProxyID)
		}
		seen[r.Val.ProxyID] = true
	}

	key, items = tw.items(t, pharox.FirstAvailable, nil, 3)
	key.pool = "no-such-pool"
	for _, it := range items {
		it.req.PoolName = key.pool
	}
	for i, r := range tw.pg.execAcquireBatch(ctx, key, items) {
		if !errors.Is(r.Err, pharox.ErrPoolNotFound) {
			t.Fatalf("request %d to an unknown pool: %v, %v", i, r.Val, r.Err)
		}
	}
}

// TestBatchRelease: one release statement ends each active lease once,
// frees its slot, and reports leases it did not end (unknown, already
// released, or named twice in the batch) for the caller to explain.
func TestBatchRelease(t *testing.T) {
	ctx := context.Background()
	tw := newTwin(t, rand.New(rand.NewPCG(3, 4)), 6)
	var leases []*pharox.Lease
	for range 4 {
		l, err := tw.pg.AcquireLease(ctx, tw.request(pharox.FirstAvailable, true, nil))
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	if _, err := tw.pg.ReleaseLease(ctx, leases[3].ID, nil); err != nil {
		t.Fatal(err)
	}
	ids := []uuid.UUID{leases[0].ID, uuid.New(), leases[1].ID, leases[3].ID, leases[0].ID, leases[2].ID}
	items := make([]releaseItem, len(ids))
	for i, id := range ids {
		items[i] = releaseItem{id: id}
	}
	res := tw.pg.execReleaseBatch(ctx, false, items)
	for i, want := range []bool{true, false, true, false, false, true} {
		if got := res[i].Err == nil; got != want {
			t.Fatalf("release %d (%s): %v, %v; want released=%v", i, ids[i], res[i].Val, res[i].Err, want)
		}
		if want && (res[i].Val.ID != ids[i] || res[i].Val.Status != pharox.LeaseReleased || res[i].Val.ReleasedAt == nil) {
			t.Fatalf("release %d: %+v", i, res[i].Val)
		}
		if !want && !errors.Is(res[i].Err, errReleaseMissed) {
			t.Fatalf("release %d: %v, want errReleaseMissed", i, res[i].Err)
		}
	}
	for _, id := range tw.proxyIDs {
		p, err := tw.pg.GetProxy(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if p.CurrentLeases != 0 {
			t.Fatalf("proxy %s still counts %d leases after all were released", id, p.CurrentLeases)
		}
	}
	// Through ReleaseLease, the misses get their usual errors.
	if _, err := tw.pg.ReleaseLease(ctx, uuid.New(), nil); !errors.Is(err, pharox.ErrLeaseNotFound) {
		t.Fatalf("release of an unknown lease: %v", err)
	}
	if _, err := tw.pg.ReleaseLease(ctx, leases[0].ID, nil); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Fatalf("second release: %v", err)
	}
}

// TestBatchedCallsUnderLoad drives AcquireLease and ReleaseLease from many
// goroutines, so that they really share statements, with callers whose
// contexts end at random. A lease can outlive a caller that gave up (one
// whose lone statement committed as its context ended, as without
// batching), but every proxy's counter must equal its active leases, and
// no lease may be active beyond the calls that gave up.
func TestBatchedCallsUnderLoad(t *testing.T) {
	ctx := context.Background()
	tw := newTwin(t, rand.New(rand.NewPCG(5, 6)), 10)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	var gaveUp atomic.Int64
	for g := range 24 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for range 40 {
				cctx, cancel := context.WithTimeout(ctx, time.Duration(r.IntN(3000))*time.Microsecond+100*time.Microsecond)
				l, err := tw.pg.AcquireLease(cctx, tw.request(pharox.FirstAvailable, true, nil))
				cancel()
				switch {
				case errors.Is(err, context.DeadlineExceeded):
					gaveUp.Add(1)
					continue
				case errors.Is(err, pharox.ErrNoProxyAvailable):
					continue
				case err != nil:
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				if _, err := tw.pg.ReleaseLease(ctx, l.ID, nil); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
	if gaveUp.Load() == 0 {
		t.Fatal("no caller gave up: the test proves nothing about abandoned calls")
	}
	// Discards of abandoned leases run after their callers returned: wait
	// until the store is quiet before counting.
	deadline := time.Now().Add(10 * time.Second)
	for tw.pg.acquirer.Queued()+tw.pg.releaser.Queued() > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	active, err := tw.pg.ListLeases(ctx, pharox.LeaseQuery{Status: pharox.LeaseActive})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(active)) > gaveUp.Load() {
		t.Fatalf("%d leases active, more than the %d calls that gave up", len(active), gaveUp.Load())
	}
	perProxy := map[uuid.UUID]int{}
	for _, l := range active {
		perProxy[l.ProxyID]++
	}
	for _, id := range tw.proxyIDs {
		p, err := tw.pg.GetProxy(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if p.CurrentLeases != perProxy[id] {
			t.Fatalf("proxy %s counts %d leases, %d are active", id, p.CurrentLeases, perProxy[id])
		}
	}
}

// TestDiscardReleasesLease: the lease of a caller that gave up while its
// batch ran is released, freeing its slot.
func TestDiscardReleasesLease(t *testing.T) {
	ctx := context.Background()
	tw := newTwin(t, rand.New(rand.NewPCG(7, 8)), 1)
	l, err := tw.pg.AcquireLease(ctx, tw.request(pharox.FirstAvailable, true, nil))
	if err != nil {
		t.Fatal(err)
	}
	tw.pg.discardLease(l)
	got, err := tw.pg.GetLease(ctx, l.ID)
	if err != nil || got.Status != pharox.LeaseReleased {
		t.Fatalf("discarded lease: %+v, %v; want released", got, err)
	}
	p, err := tw.pg.GetProxy(ctx, l.ProxyID)
	if err != nil || p.CurrentLeases != 0 {
		t.Fatalf("proxy after discard: %+v, %v; want no lease counted", p, err)
	}
}
