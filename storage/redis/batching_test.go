package redis

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/redistest"
	"github.com/pharox/pharox/storage/storagetest"
)

// TestConformanceUnbatched runs the conformance suite with batching off,
// the path every batch of one still takes.
func TestConformanceUnbatched(t *testing.T) {
	redistest.Client(t)
	storagetest.Run(t, func(t *testing.T) pharox.Storage { return newTestStore(t, WithMaxBatch(1)) }, storagetest.WithCapabilities(capabilities))
}

func TestWithMaxBatchValidates(t *testing.T) {
	c := redistest.Client(t)
	for _, n := range []int{0, -1, 1001} {
		if _, err := New(c, WithMaxBatch(n)); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("WithMaxBatch(%d): err = %v, want ErrInvalidArgument", n, err)
		}
	}
	s, err := New(c, WithMaxBatch(1))
	if err != nil {
		t.Fatal(err)
	}
	if s.acquires != nil || s.releases != nil {
		t.Error("WithMaxBatch(1) left batching on")
	}
}

// batchPool creates pool name with one proxy per entry of maxc
// (MaxConcurrency; 0 is unlimited) and returns the proxies.
func batchPool(t *testing.T, s *Store, name string, maxc ...int) []*pharox.Proxy {
	t.Helper()
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	in := make([]pharox.Proxy, len(maxc))
	for i, m := range maxc {
		in[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.2.%d.%d", i/200, i%200+1), Port: 8000,
			Protocol: pharox.ProtocolHTTP, Country: []string{"DE", "US"}[i%2]}
		if m > 0 {
			in[i].MaxConcurrency = ptrutil.Ptr(m)
		}
	}
	added, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	return added
}

// TestBatchedAcquireMatchesSequential checks that a batch served by
// acquire_many.lua chooses the same proxies, in the same order, as as many
// acquire.lua calls: the batch runs, its leases are released (which
// restores every strategy's order; the round-robin position is put back),
// and the same requests then run one by one.
func TestBatchedAcquireMatchesSequential(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	large := make([]int, 150) // more than CHUNK per first_available list
	for i := range large {
		large[i] = 1
	}
	for _, pc := range []struct {
		pool   string
		maxc   []int
		counts []int // fewer and more than the free slots
	}{
		{"small", []int{1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3}, []int{7, 30}},
		{"large", large, []int{100, 160}},
	} {
		proxies := batchPool(t, s, pc.pool, pc.maxc...)
		// Distinct check times and slow proxies give first_available an
		// order other than by id.
		for i, p := range proxies {
			st := pharox.StatusActive
			if i%11 == 4 {
				st = pharox.StatusSlow
			}
			r := pharox.HealthCheckResult{ProxyID: p.ID, Status: st,
				CheckedAt: time.Now().Add(-time.Duration(i*7%len(proxies)) * time.Minute)}
			if _, err := s.ApplyHealthCheckResult(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		checkBatchedAcquire(t, s, c, proxies, pc.pool, pc.counts, "", nil)
	}
}

// TestBatchedAcquireWithTargetMatchesSequential is
// TestBatchedAcquireMatchesSequential with a target that a third of the
// proxies cool down for, scattered and in a run longer than a batch's
// head reads at the start of first_available's order: batches skip the
// same proxies as single acquisitions, and neither leases a cooling one.
func TestBatchedAcquireWithTargetMatchesSequential(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	maxc := make([]int, 200)
	for i := range maxc {
		maxc[i] = 1 + i%2
	}
	proxies := batchPool(t, s, "p", maxc...)
	cooling := map[uuid.UUID]bool{}
	for i, p := range proxies {
		// Check times order first_available by index: the first 80 cool
		// down, then every third.
		r := pharox.HealthCheckResult{ProxyID: p.ID, Status: pharox.StatusActive,
			CheckedAt: time.Now().Add(-time.Duration(i) * time.Minute)}
		if _, err := s.ApplyHealthCheckResult(ctx, r); err != nil {
			t.Fatal(err)
		}
		if i < 80 || i%3 == 0 {
			o := pharox.TargetOutcome{ProxyID: p.ID, Target: "shop.example", Kind: pharox.OutcomeBanned}
			if _, _, err := s.ApplyTargetOutcome(ctx, o, pharox.DefaultTargetPolicy()); err != nil {
				t.Fatal(err)
			}
			cooling[p.ID] = true
		}
	}
	checkBatchedAcquire(t, s, c, proxies, "p", []int{30, 200}, "shop.example", cooling)
}

// checkBatchedAcquire runs the comparison of
// TestBatchedAcquireMatchesSequential on one pool, for each strategy but
// random, with and without filters, for batches of each of counts.
func checkBatchedAcquire(t *testing.T, s *Store, c *pharox.Consumer, proxies []*pharox.Proxy, pool string, counts []int,
	target string, cooling map[uuid.UUID]bool) {
	t.Helper()
	ctx := t.Context()
	filters := []*pharox.Filters{nil, {Country: "DE"}, {NoneOf: []pharox.Filters{{Country: "US"}}}}
	for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed, pharox.RoundRobin} {
		for _, f := range filters {
			sp, err := compileFilters(f)
			if err != nil {
				t.Fatal(err)
			}
			req := pharox.AcquireRequest{PoolName: pool, ConsumerID: c.ID, ConsumerName: c.Name,
				Duration: time.Minute, Strategy: st, Filters: f, Target: target}
			for _, n := range counts {
				reqs := make([]pharox.AcquireRequest, n)
				for i := range reqs {
					reqs[i] = req
				}
				rrKey := s.prefix + "p:" + proxies[0].PoolID.String() + ":rr"
				cursor := s.rdb.Get(ctx, rrKey).Val()

				var batched []string
				res := s.execAcquire(ctx, acquireKey{pool: pool, strategy: string(st), spec: sp, target: target}, reqs)
				afterBatch := poolState(t, s, proxies) + " rr:" + s.rdb.Get(ctx, rrKey).Val()
				for i, r := range res {
					batched = append(batched, outcome(t, r.Val, r.Err))
					if r.Err == nil && cooling[r.Val.ProxyID] {
						t.Errorf("pool %s, %s %s: a batch leased proxy %s, cooling down for %s", pool, st, describe(f), r.Val.ProxyID, target)
					}
					if r.Err == nil {
						if _, err := s.ReleaseLease(ctx, r.Val.ID, nil); err != nil {
							t.Fatalf("release of item %d: %v", i, err)
						}
					}
				}
				if cursor == "" {
					err = s.rdb.Del(ctx, rrKey).Err()
				} else {
					err = s.rdb.Set(ctx, rrKey, cursor, 0).Err()
				}
				if err != nil {
					t.Fatal(err)
				}
				var sequential []string
				var leases []*pharox.Lease
				for _, r := range reqs {
					l, err := s.acquireOne(ctx, r, sp)
					sequential = append(sequential, outcome(t, l, err))
					if err == nil {
						leases = append(leases, l)
						if cooling[l.ProxyID] {
							t.Errorf("pool %s, %s %s: proxy %s leased, cooling down for %s", pool, st, describe(f), l.ProxyID, target)
						}
					}
				}
				if fmt.Sprint(batched) != fmt.Sprint(sequential) {
					t.Errorf("pool %s, %s %s, %d requests:\nbatched    %v\nsequential %v", pool, st, describe(f), n, batched, sequential)
				}
				if after := poolState(t, s, proxies) + " rr:" + s.rdb.Get(ctx, rrKey).Val(); after != afterBatch {
					t.Errorf("pool %s, %s %s, %d requests: state after the batch differs from that after sequential acquisitions:\nbatched    %s\nsequential %s",
						pool, st, describe(f), n, afterBatch, after)
				}
				if len(leases) == 0 || n == counts[len(counts)-1] && len(leases) == n {
					t.Errorf("pool %s, %s %s: %d of %d leased; the case tests nothing", pool, st, describe(f), len(leases), n)
				}
				for _, l := range leases {
					if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
}

// outcome describes one acquisition's result for comparison.
func outcome(t *testing.T, l *pharox.Lease, err error) string {
	t.Helper()
	switch {
	case errors.Is(err, pharox.ErrNoProxyAvailable):
		return "none"
	case err != nil:
		t.Fatalf("acquire: %v", err)
	}
	return fmt.Sprintf("%s@%d", l.ProxyID.String()[:8], l.Proxy.CurrentLeases)
}

// TestBatchedAcquireItemErrors checks that acquire_many.lua reports errors
// per item with the sentinels of the single path.
func TestBatchedAcquireItemErrors(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	batchPool(t, s, "p", 1, 1)
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	good := pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Minute,
		Strategy: pharox.FirstAvailable}
	stranger := good
	stranger.ConsumerID = uuid.New()
	key := acquireKey{pool: "p", strategy: string(pharox.FirstAvailable)}
	res := s.execAcquire(ctx, key, []pharox.AcquireRequest{stranger, good, stranger, good, good})
	want := []error{pharox.ErrConsumerNotFound, nil, pharox.ErrConsumerNotFound, nil, pharox.ErrNoProxyAvailable}
	for i, r := range res {
		if want[i] == nil {
			if r.Err != nil || r.Val == nil || r.Val.ConsumerID != c.ID {
				t.Errorf("item %d: %v, %v; want a lease of consumer %s", i, r.Val, r.Err, c.ID)
			}
		} else if !errors.Is(r.Err, want[i]) {
			t.Errorf("item %d: err = %v, want %v", i, r.Err, want[i])
		}
	}
	if res[1].Err == nil && res[3].Err == nil && res[1].Val.ProxyID == res[3].Val.ProxyID {
		t.Error("two leases on one proxy of max_concurrency 1")
	}

	missing := acquireKey{pool: "nope", strategy: string(pharox.FirstAvailable)}
	nope := good
	nope.PoolName = "nope"
	for i, r := range s.execAcquire(ctx, missing, []pharox.AcquireRequest{nope, stranger, nope}) {
		want := pharox.ErrPoolNotFound
		if i == 1 {
			want = pharox.ErrConsumerNotFound // checked first, as in acquire.lua
		}
		if !errors.Is(r.Err, want) {
			t.Errorf("unknown pool, item %d: err = %v, want %v", i, r.Err, want)
		}
	}
}

// TestBatchedAcquireScarce runs many concurrent acquisitions through
// AcquireLease on a pool with fewer free slots than callers, holding the
// first batches until every caller is waiting so that later ones are real
// batches, and checks that exactly the free slots are leased.
func TestBatchedAcquireScarce(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	proxies := batchPool(t, s, "p", 1, 2, 1, 3, 1) // 8 slots
	const callers, slots = 40, 8
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	var entered atomic.Int64
	hold := make(chan struct{})
	var mu sync.Mutex
	var sizes []int
	s.batchHook = func(kind string, n int) {
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
		<-hold
	}
	var wg sync.WaitGroup
	leases := make([]*pharox.Lease, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() {
			entered.Add(1)
			leases[i], errs[i] = s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID,
				ConsumerName: c.Name, Duration: time.Minute, Strategy: pharox.LeastUsed})
		})
	}
	for entered.Load() < callers {
		time.Sleep(time.Millisecond)
	}
	// Let the callers that are still between entering and queueing get
	// there; if one does not, it only makes a batch smaller.
	time.Sleep(50 * time.Millisecond)
	close(hold)
	wg.Wait()

	per := map[uuid.UUID]int{}
	got := 0
	for i := range callers {
		switch {
		case errs[i] == nil:
			got++
			per[leases[i].ProxyID]++
		case !errors.Is(errs[i], pharox.ErrNoProxyAvailable):
			t.Errorf("caller %d: %v", i, errs[i])
		}
	}
	if got != slots {
		t.Errorf("%d leases, want %d (the free slots)", got, slots)
	}
	for _, p := range proxies {
		if per[p.ID] != *p.MaxConcurrency {
			t.Errorf("proxy with max_concurrency %d has %d leases", *p.MaxConcurrency, per[p.ID])
		}
	}
	// The counters acquire_many.lua defers to the end of the script.
	st, err := s.GetPoolStats(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalLeases != slots || st.LeasedProxies != len(proxies) || st.AvailableProxies != 0 {
		t.Errorf("stats: %d leases, %d leased proxies, %d available; want %d, %d, 0",
			st.TotalLeases, st.LeasedProxies, st.AvailableProxies, slots, len(proxies))
	}
	mu.Lock()
	defer mu.Unlock()
	largest := 0
	for _, n := range sizes {
		largest = max(largest, n)
	}
	if largest < 2 {
		t.Errorf("batch sizes %v: no batch of more than one acquisition", sizes)
	}
	t.Logf("batch sizes %v", sizes)
}

// TestBatchedReleaseItemErrors checks release_many.lua's per-item results:
// unknown, already released, repeated in the batch and expired leases get
// the errors of the single path.
func TestBatchedReleaseItemErrors(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	batchPool(t, s, "p", 0)
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	acquire := func(d time.Duration) *pharox.Lease {
		t.Helper()
		l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, ConsumerName: c.Name,
			Duration: d, Strategy: pharox.FirstAvailable})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	short := acquire(50 * time.Millisecond)
	a, b, done := acquire(time.Minute), acquire(time.Minute), acquire(time.Minute)
	if _, err := s.ReleaseLease(ctx, done.ID, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // short expires; nothing has reclaimed it
	ids := []uuid.UUID{a.ID, uuid.New(), done.ID, b.ID, a.ID, short.ID}
	want := []error{nil, pharox.ErrLeaseNotFound, pharox.ErrLeaseNotActive, nil, pharox.ErrLeaseNotActive, pharox.ErrLeaseNotActive}
	for i, r := range s.execRelease(ctx, struct{}{}, plainReleases(ids)) {
		if want[i] == nil {
			if r.Err != nil || r.Val == nil || r.Val.ID != ids[i] || r.Val.Status != pharox.LeaseReleased || r.Val.ReleasedAt == nil {
				t.Errorf("item %d: %+v, %v; want lease %s released", i, r.Val, r.Err, ids[i])
			}
		} else if !errors.Is(r.Err, want[i]) {
			t.Errorf("item %d: err = %v, want %v", i, r.Err, want[i])
		}
	}
	if l, err := s.GetLease(ctx, short.ID); err != nil || l.Status != pharox.LeaseExpired {
		t.Errorf("expired lease after batched release: %+v, %v; want it expired", l, err)
	}
	st, err := s.GetPoolStats(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalLeases != 0 || st.LeasedProxies != 0 {
		t.Errorf("after releasing everything: %d leases, %d leased proxies; want 0, 0", st.TotalLeases, st.LeasedProxies)
	}
	ended, err := s.ListLeases(ctx, pharox.LeaseQuery{ProxyID: a.ProxyID})
	if err != nil {
		t.Fatal(err)
	}
	if len(ended) != 4 {
		t.Errorf("ListLeases by proxy: %d leases, want 4", len(ended))
	}
}

// TestCancelledAcquireReleased checks that a lease acquired for a caller
// whose context ended while its batch ran is released, so the slot is
// free again. (A call that runs alone runs with its own context; only a
// queued one can outlive its caller.)
func TestCancelledAcquireReleased(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	batchPool(t, s, "p", 1, 1)
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Hour,
		Strategy: pharox.FirstAvailable}
	var started, hold [2]chan struct{}
	for i := range started {
		started[i], hold[i] = make(chan struct{}), make(chan struct{})
	}
	var batches atomic.Int32
	s.batchHook = func(kind string, _ int) {
		if kind != "acquire" {
			return
		}
		if i := batches.Add(1) - 1; i < 2 {
			close(started[i])
			<-hold[i]
		}
	}
	first := make(chan error, 1)
	go func() {
		_, err := s.AcquireLease(ctx, req) // runs alone, held by the hook
		first <- err
	}()
	<-started[0]
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := s.AcquireLease(cctx, req)
		errc <- err
	}()
	for s.acquires.Queued() != 1 {
		time.Sleep(time.Millisecond)
	}
	close(hold[0]) // the first call ends; the queued one is sent
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	<-started[1]
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled acquisition: err = %v, want context.Canceled", err)
	}
	close(hold[1]) // the script now runs and leases the second slot

	// The release happens in the background: wait for it, bounded.
	deadline := time.Now().Add(10 * time.Second)
	for {
		leases, err := s.ListLeases(ctx, pharox.LeaseQuery{Status: pharox.LeaseReleased})
		if err != nil {
			t.Fatal(err)
		}
		if len(leases) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d released leases after 10s, want the abandoned one", len(leases))
		}
		time.Sleep(10 * time.Millisecond)
	}
	st, err := s.GetPoolStats(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalLeases != 1 {
		t.Errorf("%d active leases after the abandoned one was released, want 1 (the first caller's)", st.TotalLeases)
	}
	if _, err := s.AcquireLease(ctx, req); err != nil {
		t.Errorf("acquire after the abandoned lease: %v", err)
	}
}

// TestBatchedReleaseRestoresPool checks that release_many.lua, which frees
// each proxy's slots at once, leaves the pool's free structures, counters
// and loads as they were before the released leases were taken: with
// proxies full, partly taken and unlimited, and some leases of one proxy
// released together.
func TestBatchedReleaseRestoresPool(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	proxies := batchPool(t, s, "p", 2, 2, 3, 0, 1)
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	// A slow proxy lives in fa:1 rather than fa:0.
	if _, err := s.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{ProxyID: proxies[1].ID,
		Status: pharox.StatusSlow, CheckedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	snapshot := func() string { return poolState(t, s, proxies) }
	take := func(n int) []uuid.UUID {
		t.Helper()
		var ids []uuid.UUID
		for range n {
			l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, ConsumerName: c.Name,
				Duration: time.Minute, Strategy: pharox.LeastUsed})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, l.ID)
		}
		return ids
	}
	for _, tc := range []struct{ before, batch int }{{0, 9}, {3, 6}, {5, 3}, {0, 12}} {
		take(tc.before)
		want := snapshot()
		ids := take(tc.batch)
		for i, r := range s.execRelease(ctx, struct{}{}, plainReleases(ids)) {
			if r.Err != nil {
				t.Fatalf("release item %d: %v", i, r.Err)
			}
		}
		if got := snapshot(); got != want {
			t.Errorf("%d leases taken, %d more released in one batch:\ngot  %s\nwant %s", tc.before, tc.batch, got, want)
		}
		// Release the rest one by one for the next case.
		leases, err := s.ListLeases(ctx, pharox.LeaseQuery{Status: pharox.LeaseActive})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range leases {
			if _, err := s.releaseOne(ctx, releaseReq{id: l.ID}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// poolState describes the pool's free structures, its counters and its
// proxies' loads, for comparison.
func poolState(t *testing.T, s *Store, proxies []*pharox.Proxy) string {
	t.Helper()
	ctx := t.Context()
	pid := proxies[0].PoolID.String()
	var b []string
	for _, k := range []string{"free", "fa:0", "fa:1", "lu"} {
		v, err := s.rdb.ZRangeWithScores(ctx, s.prefix+"p:"+pid+":"+k, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, fmt.Sprint(k, v))
	}
	cnt := s.rdb.HGetAll(ctx, s.prefix+"p:"+pid+":cnt").Val()
	if cnt["leased"] == "0" {
		delete(cnt, "leased") // absent until the first lease
	}
	b = append(b, fmt.Sprint(cnt))
	for _, p := range proxies {
		b = append(b, s.rdb.HGet(ctx, s.prefix+"proxy:"+p.ID.String(), "cur").Val())
	}
	n, err := s.rdb.ZCard(ctx, s.prefix+"p:"+pid+":exp").Result()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(b, " active:", n)
}

// plainReleases returns releases of ids without usage reports, as
// execRelease takes them.
func plainReleases(ids []uuid.UUID) []releaseReq {
	reqs := make([]releaseReq, len(ids))
	for i, id := range ids {
		reqs[i] = releaseReq{id: id}
	}
	return reqs
}
