package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

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

// TestAcquireWithTargetSkipsCoolingProxies: with every second proxy cooling
// down for a target, acquisitions for that target lease exactly the
// others, for every strategy, one at a time and batched (concurrent
// callers share statements); acquisitions for another target, or for
// none, still lease every proxy.
func TestAcquireWithTargetSkipsCoolingProxies(t *testing.T) {
	ctx := context.Background()
	for _, st := range pharox.AllStrategies {
		for _, concurrent := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/concurrent=%v", st, concurrent), func(t *testing.T) {
				s := newTestStore(t)
				pool, c := seedPool(t, s, "targets", 40, 1)
				all, err := s.ListProxies(ctx, pool.ID)
				if err != nil {
					t.Fatal(err)
				}
				cooling := map[uuid.UUID]bool{}
				for i, p := range all {
					if i%2 == 1 {
						cooling[p.ID] = true
						banForTarget(t, s, "shop.example", p.ID)
					}
				}
				req := pharox.AcquireRequest{PoolName: "targets", ConsumerID: c.ID, Duration: time.Minute, Strategy: st, Target: "shop.example"}
				var (
					mu     sync.Mutex
					leased []*pharox.Lease
					errs   []error
				)
				acquire := func() {
					l, err := s.AcquireLease(ctx, req)
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						errs = append(errs, err)
						return
					}
					leased = append(leased, l)
				}
				if concurrent {
					var wg sync.WaitGroup
					for range 30 {
						wg.Go(acquire)
					}
					wg.Wait()
				} else {
					for range 30 {
						acquire()
					}
				}
				for _, l := range leased {
					if cooling[l.ProxyID] {
						t.Fatalf("leased proxy %s for shop.example, which it is cooling down for", l.ProxyID)
					}
				}
				if len(leased) != 20 {
					t.Fatalf("leased %d proxies for shop.example, want the 20 not cooling down (errors: %v)", len(leased), errs)
				}
				for _, err := range errs {
					if !errors.Is(err, pharox.ErrNoProxyAvailable) {
						t.Fatalf("acquire: %v", err)
					}
				}
				// The cooling ones are still there for another target and
				// for none.
				other := req
				other.Target = "news.example"
				if l, err := s.AcquireLease(ctx, other); err != nil || !cooling[l.ProxyID] {
					t.Fatalf("acquire for news.example: %v, %v", l, err)
				}
				other.Target = ""
				if l, err := s.AcquireLease(ctx, other); err != nil || !cooling[l.ProxyID] {
					t.Fatalf("acquire without a target: %v, %v", l, err)
				}
			})
		}
	}
}

// TestStickyRebindsAwayFromCoolingProxy: a session bound to a proxy that
// starts cooling down for the target gets another proxy for that target,
// bound from then on; without the target it would have kept its proxy.
func TestStickyRebindsAwayFromCoolingProxy(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	_, c := seedPool(t, s, "sticky", 4, 5)
	req := pharox.AcquireRequest{PoolName: "sticky", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.RoundRobin,
		SessionKey: "user-1", SessionTTL: time.Hour, Target: "shop.example"}
	first, err := s.AcquireLease(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.AcquireLease(ctx, req)
	if err != nil || again.ProxyID != first.ProxyID {
		t.Fatalf("second sticky acquisition: %v, %v; want proxy %s", again, err, first.ProxyID)
	}
	banForTarget(t, s, "shop.example", first.ProxyID)
	moved, err := s.AcquireLease(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if moved.ProxyID == first.ProxyID {
		t.Fatalf("sticky acquisition for shop.example kept proxy %s, which is cooling down for it", first.ProxyID)
	}
	after, err := s.AcquireLease(ctx, req)
	if err != nil || after.ProxyID != moved.ProxyID {
		t.Fatalf("the session was not bound anew: %v, %v; want proxy %s", after, err, moved.ProxyID)
	}
	// Another target is not affected by the cool-down: the session's
	// binding (now the new proxy) holds.
	req.Target = "news.example"
	if l, err := s.AcquireLease(ctx, req); err != nil || l.ProxyID != moved.ProxyID {
		t.Fatalf("sticky acquisition for news.example: %v, %v; want proxy %s", l, err, moved.ProxyID)
	}
}

// refTargets is the reference model of one store's per-target entries:
// pharox.TargetState.Apply per entry plus the per-proxy cap (evict the
// longest-idle entry, ties by target) and the escalation count, as the
// TargetStore contract states them.
type refTargets map[uuid.UUID]map[string]pharox.TargetState

func (r refTargets) apply(o pharox.TargetOutcome, p pharox.TargetPolicy, now time.Time) (pharox.TargetState, int) {
	m := r[o.ProxyID]
	if m == nil {
		m = map[string]pharox.TargetState{}
		r[o.ProxyID] = m
	}
	old, ok := m[o.Target]
	if !ok {
		for len(m) >= p.MaxTargetsPerProxy {
			var victim *pharox.TargetState
			for _, st := range m {
				if victim == nil || st.IdleSince().Before(victim.IdleSince()) ||
					st.IdleSince().Equal(victim.IdleSince()) && st.Target < victim.Target {
					victim = &st
				}
			}
			delete(m, victim.Target)
		}
	}
	next := old.Apply(o, p, now)
	m[o.Target] = next
	recent := 0
	for _, st := range m {
		if st.RecentlyBanned(now, p.EscalateWindow) {
			recent++
		}
	}
	return next, recent
}

// sameState compares two states field by field (times with Equal).
func sameState(a, b *pharox.TargetState) bool {
	eq := func(x, y *time.Time) bool { return x == nil && y == nil || x != nil && y != nil && x.Equal(*y) }
	return a.ProxyID == b.ProxyID && a.Target == b.Target && a.FailureStreak == b.FailureStreak && a.Bans == b.Bans &&
		eq(a.CoolingUntil, b.CoolingUntil) && eq(a.BannedAt, b.BannedAt) && a.LastReason == b.LastReason &&
		a.LastStatusCode == b.LastStatusCode && eq(a.LastSuccessAt, b.LastSuccessAt) && eq(a.LastFailureAt, b.LastFailureAt) &&
		a.UpdatedAt.Equal(b.UpdatedAt)
}

// TestApplyTargetOutcomeFollowsReference drives random outcomes (with
// times that move forward by random steps, across cool-downs, their ends
// and the retention) for a few proxies and targets through
// ApplyTargetOutcome and through the reference model, with a cap of 3
// entries per proxy: every returned state, escalation count and, at the
// end, every stored entry agree. A purge then deletes exactly the entries
// idle before its time, and deleting a proxy deletes its entries.
func TestApplyTargetOutcomeFollowsReference(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	pool, _ := seedPool(t, s, "outcomes", 3, 1)
	proxies, err := s.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	p := pharox.TargetPolicy{FailureThreshold: 2, BaseCooldown: time.Minute, MaxCooldown: 10 * time.Minute,
		Retention: time.Hour, MaxTargetsPerProxy: 3, EscalateTargets: 2, EscalateWindow: 20 * time.Minute}
	targets := []string{"a.example", "b.example", "c.example", "d.example", "e.example"}
	kinds := []pharox.OutcomeKind{pharox.OutcomeSuccess, pharox.OutcomeFailure, pharox.OutcomeFailure, pharox.OutcomeBanned}
	ref := refTargets{}
	r := rand.New(rand.NewPCG(3, 4))
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 600 {
		now = now.Add(time.Duration(r.IntN(int(3*time.Minute/time.Second))) * time.Second)
		if r.IntN(40) == 0 {
			now = now.Add(2 * time.Hour) // past the retention
		}
		o := pharox.TargetOutcome{ProxyID: proxies[r.IntN(len(proxies))].ID, Target: targets[r.IntN(len(targets))],
			Kind: kinds[r.IntN(len(kinds))], StatusCode: 400 + r.IntN(100), Reason: fmt.Sprintf("reason %d", i), At: now}
		got, n, err := s.ApplyTargetOutcome(ctx, o, p)
		if err != nil {
			t.Fatal(err)
		}
		want, wn := ref.apply(o, p, now)
		if !sameState(got, &want) || n != wn {
			t.Fatalf("outcome %d %+v:\n got %+v, %d\nwant %+v, %d", i, o, got, n, &want, wn)
		}
	}
	stored := 0
	for _, px := range proxies {
		list, err := s.ListTargetStates(ctx, px.ID)
		if err != nil {
			t.Fatal(err)
		}
		var want []pharox.TargetState
		for _, st := range ref[px.ID] {
			want = append(want, st)
		}
		slices.SortFunc(want, func(a, b pharox.TargetState) int { return strings.Compare(a.Target, b.Target) })
		if len(list) != len(want) {
			t.Fatalf("proxy %s has %d entries, the reference %d", px.ID, len(list), len(want))
		}
		for i := range list {
			if !sameState(list[i], &want[i]) {
				t.Fatalf("proxy %s entry %d: %+v, reference %+v", px.ID, i, list[i], &want[i])
			}
		}
		stored += len(list)
	}
	if stored < 6 {
		t.Fatalf("only %d entries at the end: the test proves little", stored)
	}

	// Purge at a time some entries are idle before and some not.
	cut := now.Add(-30 * time.Minute)
	wantPurged := 0
	for _, m := range ref {
		for _, st := range m {
			if st.IdleSince().Before(cut) {
				wantPurged++
			}
		}
	}
	n, err := s.PurgeTargetStates(ctx, cut)
	if err != nil || n != wantPurged {
		t.Fatalf("purge: %d, %v; want %d", n, err, wantPurged)
	}

	// Entries go with their proxy.
	banForTarget(t, s, "z.example", proxies[0].ID)
	if err := s.DeleteProxy(ctx, proxies[0].ID); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := s.pool.QueryRow(ctx, s.q(`SELECT count(*) FROM {s}.proxy_targets WHERE proxy_id = $1`), proxies[0].ID).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d entries of a deleted proxy left, %v", left, err)
	}
	if _, err := s.ListTargetStates(ctx, proxies[0].ID); !errors.Is(err, pharox.ErrProxyNotFound) {
		t.Fatalf("ListTargetStates of a deleted proxy: %v", err)
	}
	if _, _, err := s.ApplyTargetOutcome(ctx, pharox.TargetOutcome{ProxyID: proxies[0].ID, Target: "z.example", Kind: pharox.OutcomeFailure}, p); !errors.Is(err, pharox.ErrProxyNotFound) {
		t.Fatalf("ApplyTargetOutcome for a deleted proxy: %v", err)
	}
}

// TestPoolTargetStats: per target, the proxies cooling down now, the
// leasable ones not cooling, and the bans of the last hour; an unknown
// pool is ErrPoolNotFound.
func TestPoolTargetStats(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	pool, _ := seedPool(t, s, "stats", 6, 1)
	proxies, err := s.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetProxyStatus(ctx, proxies[5].ID, pharox.StatusBanned); err != nil {
		t.Fatal(err)
	}
	banForTarget(t, s, "shop.example", proxies[0].ID, proxies[1].ID, proxies[5].ID)
	banForTarget(t, s, "news.example", proxies[2].ID)
	// An old cool-down, long over: an entry, but no ban in the last hour.
	if _, _, err := s.ApplyTargetOutcome(ctx, pharox.TargetOutcome{ProxyID: proxies[3].ID, Target: "mail.example", Kind: pharox.OutcomeBanned,
		At: time.Now().Add(-2 * time.Hour)}, pharox.DefaultTargetPolicy()); err != nil {
		t.Fatal(err)
	}
	got, err := s.PoolTargetStats(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []pharox.TargetStats{
		{Target: "mail.example", CoolingProxies: 0, UsableProxies: 5, BansLastHour: 0},
		{Target: "news.example", CoolingProxies: 1, UsableProxies: 4, BansLastHour: 1},
		{Target: "shop.example", CoolingProxies: 3, UsableProxies: 3, BansLastHour: 3},
	}
	if len(got) != len(want) {
		t.Fatalf("stats: %+v", got)
	}
	for i := range want {
		if *got[i] != want[i] {
			t.Fatalf("stats %d: %+v, want %+v", i, *got[i], want[i])
		}
	}
	if _, err := s.PoolTargetStats(ctx, uuid.New()); !errors.Is(err, pharox.ErrPoolNotFound) {
		t.Fatalf("unknown pool: %v", err)
	}
}

// TestBatchStatementSkipsCoolingProxies runs the batch statement itself
// (as concurrent callers share it) with a target, for every strategy:
// it leases only proxies not cooling down for the target, and leaves the
// requests beyond them unserved.
func TestBatchStatementSkipsCoolingProxies(t *testing.T) {
	ctx := context.Background()
	for _, st := range pharox.AllStrategies {
		t.Run(string(st), func(t *testing.T) {
			s := newTestStore(t)
			pool, c := seedPool(t, s, "batch", 12, 1)
			all, err := s.ListProxies(ctx, pool.ID)
			if err != nil {
				t.Fatal(err)
			}
			cooling := map[uuid.UUID]bool{}
			for i, p := range all {
				if i%3 != 0 {
					cooling[p.ID] = true
					banForTarget(t, s, "shop.example", p.ID)
				}
			}
			items := make([]*acquireItem, 8)
			var key acquireBatchKey
			for i := range items {
				req := pharox.AcquireRequest{PoolName: "batch", ConsumerID: c.ID, Duration: time.Minute, Strategy: st, Target: "shop.example"}
				a := &args{vals: make([]any, batchFixedParams)}
				a.add(req.Target)
				where := filterSQL(req.Filters, "p", a)
				items[i] = &acquireItem{req: &req, leaseID: uuid.New(), where: where, filter: a.vals[batchFixedParams:]}
				key = acquireBatchKey{pool: req.PoolName, strategy: st, target: req.Target}
			}
			served := 0
			for i, r := range s.execAcquireBatch(ctx, key, items) {
				switch {
				case errors.Is(r.Err, errNotServed):
				case r.Err != nil:
					t.Fatalf("request %d: %v", i, r.Err)
				case cooling[r.Val.ProxyID]:
					t.Fatalf("request %d leased proxy %s, cooling down for shop.example", i, r.Val.ProxyID)
				default:
					served++
				}
			}
			if served != 4 {
				t.Fatalf("the batch served %d requests, want the 4 proxies not cooling down", served)
			}
		})
	}
}
