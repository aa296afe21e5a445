package storagetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

// targetTests cover per-target health ([pharox.TargetStore]). They run
// when the store implements it and are skipped, saying so, otherwise.
var targetTests = []subtest{
	{name: "AcquireSkipsCoolingProxies", fn: testTargetAcquireSkipsCooling},
	{name: "EveryStrategyAndFilter", fn: testTargetStrategies},
	{name: "SessionBindingCooling", fn: testTargetSession},
	{name: "CooldownExpiry", fn: testTargetCooldownExpiry},
	{name: "ExponentialBackoff", fn: testTargetBackoff},
	{name: "EscalationCount", fn: testTargetEscalationCount},
	{name: "CapPerProxy", fn: testTargetCap},
	{name: "Purge", fn: testTargetPurge},
	{name: "PoolTargetStats", fn: testTargetPoolStats},
	{name: "Errors", fn: testTargetErrors},
	{name: "DeleteProxyDropsEntries", fn: testTargetDeleteProxy},
	{name: "MatchesReference", fn: testTargetMatchesReference},
	{name: "ConcurrentBansAndAcquisitions", fn: testTargetConcurrent},
}

// targetStore returns f's store as the TargetStore under test.
func (f *fixture) targetStore() pharox.TargetStore { return f.s }

// targetPolicy is the policy the section applies: the default with a long
// first cool-down, so bans last the whole test.
func targetPolicy() pharox.TargetPolicy {
	return pharox.DefaultTargetPolicy()
}

// ban starts a cool-down of proxy for target now (store clock).
func (f *fixture) ban(ts pharox.TargetStore, proxy uuid.UUID, target string, p pharox.TargetPolicy) *pharox.TargetState {
	f.t.Helper()
	st, _, err := ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: proxy, Target: target, Kind: pharox.OutcomeBanned, StatusCode: 403, Reason: "blocked"}, p)
	if err != nil {
		f.t.Fatalf("ApplyTargetOutcome(banned, %s, %q): %v", proxy, target, err)
	}
	if st == nil || st.CoolingUntil == nil {
		f.t.Fatalf("ApplyTargetOutcome(banned, %q) returned %+v, want a cool-down", target, st)
	}
	return st
}

// leasedProxies acquires with req until no proxy is left (proxies must be
// exclusive) and returns the set of proxies leased, releasing them again.
func (f *fixture) leasedProxies(req pharox.AcquireRequest, limit int) map[uuid.UUID]bool {
	f.t.Helper()
	ls, err := f.drain(req, limit)
	if err != nil {
		f.t.Fatalf("AcquireLease(target %q): %v", req.Target, err)
	}
	got := make(map[uuid.UUID]bool, len(ls))
	for _, l := range ls {
		got[l.ProxyID] = true
	}
	f.releaseAll(ls)
	return got
}

func testTargetAcquireSkipsCooling(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	ps := f.addN(pool, 4, 1)
	p := targetPolicy()
	f.ban(ts, ps[0].ID, "shop.example", p)
	f.ban(ts, ps[2].ID, "shop.example", p)
	f.ban(ts, ps[3].ID, "news.example", p)

	req := f.req(pool.Name)
	req.Target = "shop.example"
	got := f.leasedProxies(req, 10)
	if len(got) != 2 || !got[ps[1].ID] || !got[ps[3].ID] {
		t.Fatalf("acquiring for shop.example leased %d proxies %v, want exactly the two not cooling for it", len(got), got)
	}
	req.Target = "news.example"
	if got := f.leasedProxies(req, 10); len(got) != 3 || got[ps[3].ID] {
		t.Fatalf("acquiring for news.example leased %v, want the three not cooling for it", got)
	}
	req.Target = "other.example"
	if got := f.leasedProxies(req, 10); len(got) != 4 {
		t.Fatalf("acquiring for a target without entries leased %d proxies, want all 4", len(got))
	}
	req.Target = ""
	if got := f.leasedProxies(req, 10); len(got) != 4 {
		t.Fatalf("acquiring without a target leased %d proxies, want all 4", len(got))
	}
	// Successes and failures below the threshold do not cool a proxy.
	for _, k := range []pharox.OutcomeKind{pharox.OutcomeSuccess, pharox.OutcomeFailure} {
		if _, _, err := ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: ps[1].ID, Target: "quiet.example", Kind: k}, p); err != nil {
			t.Fatal(err)
		}
	}
	req.Target = "quiet.example"
	if got := f.leasedProxies(req, 10); len(got) != 4 {
		t.Fatalf("acquiring for a target with one failure reported leased %d proxies, want all 4", len(got))
	}
	// With every proxy cooling, the miss is ErrNoProxyAvailable.
	for _, x := range ps {
		f.ban(ts, x.ID, "strict.example", p)
	}
	req.Target = "strict.example"
	f.noProxy(req, "every proxy cooling for the target")
}

func testTargetStrategies(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	in := make([]pharox.Proxy, 12)
	for i := range in {
		in[i] = f.proxy(pool)
		in[i].MaxConcurrency = ptrutil.Ptr(1)
		in[i].Country = []string{"US", "DE"}[i%2]
	}
	ps := f.add(in...)
	p := targetPolicy()
	cooling := map[uuid.UUID]bool{}
	for i, x := range ps {
		if i%3 != 1 {
			f.ban(ts, x.ID, "shop.example", p)
			cooling[x.ID] = true
		}
	}
	for _, st := range pharox.AllStrategies {
		for _, filters := range []*pharox.Filters{nil, {Country: "DE"}, {Protocol: pharox.ProtocolHTTP}} {
			req := f.req(pool.Name)
			req.Strategy, req.Filters, req.Target = st, filters, "shop.example"
			got := f.leasedProxies(req, 20)
			want := 0
			for _, x := range ps {
				if !cooling[x.ID] && filters.Match(x) {
					want++
				}
			}
			for id := range got {
				if cooling[id] {
					t.Errorf("%s with filters %+v leased proxy %s, cooling for the target", st, filters, id)
				}
			}
			if len(got) != want {
				t.Errorf("%s with filters %+v leased %d proxies, want the %d matching ones not cooling", st, filters, len(got), want)
			}
		}
	}
}

func testTargetSession(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	f.addN(pool, 2, 0)
	req := f.req(pool.Name)
	req.SessionKey, req.SessionTTL = "user-1", time.Minute
	first := f.acquire(req)
	f.release(first.ID)
	f.ban(ts, first.ProxyID, "shop.example", targetPolicy())
	req.Target = "shop.example"
	second := f.acquire(req)
	if second.ProxyID == first.ProxyID {
		t.Fatalf("sticky session kept proxy %s although it cools down for the target", first.ProxyID)
	}
	f.release(second.ID)
	// The session now follows the new proxy, for the target and without.
	req.Target = ""
	third := f.acquire(req)
	if third.ProxyID != second.ProxyID {
		t.Fatalf("session rebinding: got proxy %s, want %s", third.ProxyID, second.ProxyID)
	}
}

func testTargetCooldownExpiry(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	ps := f.addN(pool, 2, 1)
	p := targetPolicy()
	p.BaseCooldown, p.MaxCooldown = shortTTL, shortTTL
	st := f.ban(ts, ps[0].ID, "shop.example", p)
	req := f.req(pool.Name)
	req.Target = "shop.example"
	if got := f.leasedProxies(req, 10); len(got) != 1 || got[ps[0].ID] {
		t.Fatalf("during the cool-down: leased %v, want only %s", got, ps[1].ID)
	}
	time.Sleep(shortWait)
	if got := f.leasedProxies(req, 10); len(got) != 2 {
		t.Fatalf("after the cool-down (until %v): leased %d proxies, want both", st.CoolingUntil, len(got))
	}
}

func testTargetBackoff(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	ps := f.addN(pool, 1, 0)
	p := targetPolicy()
	p.FailureThreshold, p.BaseCooldown, p.MaxCooldown = 2, time.Minute, 5*time.Minute
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	apply := func(kind pharox.OutcomeKind, at time.Time) *pharox.TargetState {
		t.Helper()
		st, _, err := ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: ps[0].ID, Target: "shop.example", Kind: kind, At: at}, p)
		if err != nil {
			t.Fatalf("ApplyTargetOutcome(%s at %v): %v", kind, at, err)
		}
		return st
	}
	wantCool := func(st *pharox.TargetState, bans int, until time.Time) {
		t.Helper()
		if st.Bans != bans || st.CoolingUntil == nil || !st.CoolingUntil.Equal(until) {
			t.Fatalf("state %+v: want Bans %d cooling until %v", st, bans, until)
		}
	}
	if st := apply(pharox.OutcomeFailure, t0); st.FailureStreak != 1 || st.CoolingUntil != nil {
		t.Fatalf("one failure: %+v", st)
	}
	wantCool(apply(pharox.OutcomeFailure, t0.Add(time.Second)), 1, t0.Add(time.Second+time.Minute))
	// Reports during the cool-down do not stack.
	wantCool(apply(pharox.OutcomeBanned, t0.Add(2*time.Second)), 1, t0.Add(time.Second+time.Minute))
	at := t0.Add(2 * time.Minute)
	wantCool(apply(pharox.OutcomeBanned, at), 2, at.Add(2*time.Minute))
	at = at.Add(3 * time.Minute)
	wantCool(apply(pharox.OutcomeBanned, at), 3, at.Add(4*time.Minute))
	at = at.Add(5 * time.Minute)
	wantCool(apply(pharox.OutcomeBanned, at), 4, at.Add(5*time.Minute)) // capped
	// A success after the cool-down resets the backoff.
	at = at.Add(6 * time.Minute)
	if st := apply(pharox.OutcomeSuccess, at); st.Bans != 0 || st.CoolingUntil != nil || st.LastSuccessAt == nil || !st.LastSuccessAt.Equal(at) {
		t.Fatalf("success after the cool-down: %+v", st)
	}
	at = at.Add(time.Second)
	wantCool(apply(pharox.OutcomeBanned, at), 1, at.Add(time.Minute))
}

func testTargetEscalationCount(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	ps := f.addN(pool, 2, 0)
	p := targetPolicy()
	now := time.Now().UTC().Truncate(time.Millisecond)
	apply := func(proxy uuid.UUID, target string, kind pharox.OutcomeKind, at time.Time) int {
		t.Helper()
		_, n, err := ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: proxy, Target: target, Kind: kind, At: at}, p)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// A ban older than the window does not count; neither do failures
	// below the threshold or other proxies' bans.
	apply(ps[0].ID, "old.example", pharox.OutcomeBanned, now.Add(-p.EscalateWindow-time.Minute))
	apply(ps[1].ID, "a.example", pharox.OutcomeBanned, now)
	if n := apply(ps[0].ID, "quiet.example", pharox.OutcomeFailure, now); n != 0 {
		t.Fatalf("no recent ban: count %d, want 0", n)
	}
	for i, target := range []string{"a.example", "b.example", "c.example"} {
		if n := apply(ps[0].ID, target, pharox.OutcomeBanned, now); n != i+1 {
			t.Fatalf("after banning for %d targets: count %d", i+1, n)
		}
	}
	// A repeated report during the cool-down still counts once.
	if n := apply(ps[0].ID, "a.example", pharox.OutcomeBanned, now.Add(time.Second)); n != 3 {
		t.Fatalf("repeated ban: count %d, want 3", n)
	}
}

func testTargetCap(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	ps := f.addN(pool, 2, 0)
	p := targetPolicy()
	p.MaxTargetsPerProxy = 3
	t0 := time.Now().UTC().Truncate(time.Millisecond).Add(-time.Hour)
	apply := func(target string, kind pharox.OutcomeKind, at time.Time) {
		t.Helper()
		if _, _, err := ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: ps[0].ID, Target: target, Kind: kind, At: at}, p); err != nil {
			t.Fatal(err)
		}
	}
	// t1 is banned first but cools until long after the others: the
	// longest idle entry is t2.
	apply("t1.example", pharox.OutcomeBanned, t0)
	apply("t2.example", pharox.OutcomeFailure, t0.Add(time.Minute))
	apply("t3.example", pharox.OutcomeFailure, t0.Add(2*time.Minute))
	apply("t4.example", pharox.OutcomeFailure, t0.Add(3*time.Minute))
	wantTargets(t, f, ts, ps[0].ID, "t1.example", "t3.example", "t4.example")
	// Updating an existing entry evicts nothing.
	apply("t3.example", pharox.OutcomeFailure, t0.Add(4*time.Minute))
	wantTargets(t, f, ts, ps[0].ID, "t1.example", "t3.example", "t4.example")
	apply("t5.example", pharox.OutcomeSuccess, t0.Add(5*time.Minute))
	wantTargets(t, f, ts, ps[0].ID, "t1.example", "t3.example", "t5.example")
	// Another proxy's entries are its own.
	if _, _, err := ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: ps[1].ID, Target: "t2.example", Kind: pharox.OutcomeFailure}, p); err != nil {
		t.Fatal(err)
	}
	wantTargets(t, f, ts, ps[1].ID, "t2.example")
	wantTargets(t, f, ts, ps[0].ID, "t1.example", "t3.example", "t5.example")
}

// wantTargets asserts the targets the proxy has entries for, in order.
func wantTargets(t *testing.T, f *fixture, ts pharox.TargetStore, proxy uuid.UUID, want ...string) []*pharox.TargetState {
	t.Helper()
	sts, err := ts.ListTargetStates(f.ctx, proxy)
	if err != nil {
		t.Fatalf("ListTargetStates(%s): %v", proxy, err)
	}
	got := make([]string, len(sts))
	for i, st := range sts {
		got[i] = st.Target
		if st.ProxyID != proxy {
			t.Errorf("entry %q has ProxyID %s, want %s", st.Target, st.ProxyID, proxy)
		}
	}
	if want == nil {
		want = []string{}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("proxy %s has entries for %v, want %v", proxy, got, want)
	}
	return sts
}

func testTargetPurge(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	ps := f.addN(pool, 2, 0)
	p := targetPolicy()
	p.BaseCooldown, p.MaxCooldown = time.Hour, time.Hour
	now := time.Now().UTC().Truncate(time.Millisecond)
	apply := func(proxy uuid.UUID, target string, kind pharox.OutcomeKind, at time.Time) {
		t.Helper()
		if _, _, err := ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: proxy, Target: target, Kind: kind, At: at}, p); err != nil {
			t.Fatal(err)
		}
	}
	apply(ps[0].ID, "old.example", pharox.OutcomeFailure, now.Add(-3*time.Hour))       // idle since -3h
	apply(ps[0].ID, "cooled.example", pharox.OutcomeBanned, now.Add(-150*time.Minute)) // idle since -90m
	apply(ps[0].ID, "recent.example", pharox.OutcomeFailure, now.Add(-time.Minute))
	apply(ps[1].ID, "old.example", pharox.OutcomeSuccess, now.Add(-5*time.Hour))
	apply(ps[1].ID, "cooling.example", pharox.OutcomeBanned, now.Add(-90*time.Minute)) // idle since -30m
	n, err := ts.PurgeTargetStates(f.ctx, now.Add(-2*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("PurgeTargetStates(-2h) = %d, %v; want 2", n, err)
	}
	wantTargets(t, f, ts, ps[0].ID, "cooled.example", "recent.example")
	wantTargets(t, f, ts, ps[1].ID, "cooling.example")
	n, err = ts.PurgeTargetStates(f.ctx, now.Add(-time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("PurgeTargetStates(-1h) = %d, %v; want 1", n, err)
	}
	wantTargets(t, f, ts, ps[0].ID, "recent.example")
	wantTargets(t, f, ts, ps[1].ID, "cooling.example")
	if n, err := ts.PurgeTargetStates(f.ctx, now.Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("second PurgeTargetStates = %d, %v; want 0", n, err)
	}
}

func testTargetPoolStats(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	other := f.pool("other")
	ps := f.addN(pool, 5, 0)
	ops := f.addN(other, 1, 0)
	f.setStatus(ps[4].ID, pharox.StatusInactive)
	p := targetPolicy()
	p.BaseCooldown, p.MaxCooldown = time.Hour, time.Hour
	now := time.Now().UTC().Truncate(time.Millisecond)
	apply := func(proxy uuid.UUID, target string, kind pharox.OutcomeKind, at time.Time) {
		t.Helper()
		if _, _, err := ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: proxy, Target: target, Kind: kind, At: at}, p); err != nil {
			t.Fatal(err)
		}
	}
	apply(ps[0].ID, "shop.example", pharox.OutcomeBanned, now)
	apply(ps[1].ID, "shop.example", pharox.OutcomeBanned, now.Add(-90*time.Minute)) // ended 30m ago
	apply(ps[4].ID, "shop.example", pharox.OutcomeBanned, now)                      // inactive anyway
	apply(ps[2].ID, "news.example", pharox.OutcomeFailure, now)
	apply(ops[0].ID, "other.example", pharox.OutcomeBanned, now)
	got, err := ts.PoolTargetStats(f.ctx, pool.ID)
	if err != nil {
		t.Fatalf("PoolTargetStats: %v", err)
	}
	want := []pharox.TargetStats{
		{Target: "news.example", CoolingProxies: 0, UsableProxies: 4, BansLastHour: 0},
		{Target: "shop.example", CoolingProxies: 2, UsableProxies: 3, BansLastHour: 2},
	}
	if len(got) != len(want) {
		t.Fatalf("PoolTargetStats = %s, want %v", fmtStats(got), want)
	}
	for i := range want {
		if *got[i] != want[i] {
			t.Fatalf("PoolTargetStats = %s, want %v", fmtStats(got), want)
		}
	}
	empty := f.pool("empty")
	if got, err := ts.PoolTargetStats(f.ctx, empty.ID); err != nil || len(got) != 0 {
		t.Fatalf("PoolTargetStats(empty pool) = %s, %v; want none", fmtStats(got), err)
	}
	_, err = ts.PoolTargetStats(f.ctx, uuid.New())
	wantErr(t, "PoolTargetStats(unknown pool)", err, pharox.ErrPoolNotFound)
}

func fmtStats(sts []*pharox.TargetStats) string {
	out := "["
	for _, s := range sts {
		out += fmt.Sprintf("%+v ", *s)
	}
	return out + "]"
}

func testTargetErrors(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	ps := f.addN(pool, 1, 0)
	p := targetPolicy()
	_, _, err := ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: uuid.New(), Target: "shop.example", Kind: pharox.OutcomeBanned}, p)
	wantErr(t, "ApplyTargetOutcome(unknown proxy)", err, pharox.ErrProxyNotFound)
	for name, o := range map[string]pharox.TargetOutcome{
		"empty target":        {ProxyID: ps[0].ID, Kind: pharox.OutcomeBanned},
		"unnormalized target": {ProxyID: ps[0].ID, Target: "https://Shop.example/", Kind: pharox.OutcomeBanned},
		"unknown kind":        {ProxyID: ps[0].ID, Target: "shop.example", Kind: "meh"},
	} {
		_, _, err := ts.ApplyTargetOutcome(f.ctx, o, p)
		wantErr(t, "ApplyTargetOutcome("+name+")", err, pharox.ErrInvalidArgument)
	}
	_, _, err = ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: ps[0].ID, Target: "shop.example", Kind: pharox.OutcomeBanned}, pharox.TargetPolicy{})
	wantErr(t, "ApplyTargetOutcome(zero policy)", err, pharox.ErrInvalidArgument)
	wantTargets(t, f, ts, ps[0].ID)
	_, err = ts.ListTargetStates(f.ctx, uuid.New())
	wantErr(t, "ListTargetStates(unknown proxy)", err, pharox.ErrProxyNotFound)
	req := f.req(pool.Name)
	req.Target = "Shop.Example:443"
	_, err = f.s.AcquireLease(f.ctx, req)
	wantErr(t, "AcquireLease(unnormalized target)", err, pharox.ErrInvalidArgument)
}

func testTargetDeleteProxy(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	ps := f.addN(pool, 2, 1)
	p := targetPolicy()
	f.ban(ts, ps[0].ID, "shop.example", p)
	if err := f.s.DeleteProxy(f.ctx, ps[0].ID); err != nil {
		t.Fatal(err)
	}
	_, err := ts.ListTargetStates(f.ctx, ps[0].ID)
	wantErr(t, "ListTargetStates(deleted proxy)", err, pharox.ErrProxyNotFound)
	// A new proxy (perhaps in the deleted one's place) starts clean.
	np := f.addN(pool, 1, 1)
	wantTargets(t, f, ts, np[0].ID)
	req := f.req(pool.Name)
	req.Target = "shop.example"
	if got := f.leasedProxies(req, 10); len(got) != 2 {
		t.Fatalf("after deleting the cooling proxy: leased %d proxies for the target, want 2", len(got))
	}
	if got, err := ts.PoolTargetStats(f.ctx, pool.ID); err != nil || len(got) != 0 {
		t.Fatalf("PoolTargetStats after deleting the only proxy with entries = %s, %v; want none", fmtStats(got), err)
	}
	f.ban(ts, np[0].ID, "shop.example", p)
	l := f.acquire(f.req(pool.Name))
	f.release(l.ID)
	if err := f.s.DeletePool(f.ctx, pool.ID); err != nil {
		t.Fatal(err)
	}
	_, err = ts.ListTargetStates(f.ctx, np[0].ID)
	wantErr(t, "ListTargetStates(proxy of a deleted pool)", err, pharox.ErrProxyNotFound)
	if n, err := ts.PurgeTargetStates(f.ctx, time.Now().Add(48*time.Hour)); err != nil || n != 0 {
		t.Fatalf("PurgeTargetStates after deleting the pool = %d, %v; want 0 (entries went with their proxies)", n, err)
	}
}

// testTargetMatchesReference applies random outcome sequences to a few
// (proxy, target) pairs in the store and to the reference rule
// [pharox.TargetState.Apply], with the per-proxy cap and the escalation
// count modelled next to it, and compares every returned state.
func testTargetMatchesReference(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	ps := f.addN(pool, 3, 0)
	p := pharox.TargetPolicy{
		FailureThreshold: 2, BaseCooldown: time.Minute, MaxCooldown: 8 * time.Minute,
		Retention: 30 * time.Minute, MaxTargetsPerProxy: 3, EscalateTargets: 2, EscalateWindow: 10 * time.Minute,
	}
	targets := []string{"a.example", "b.example", "c.example", "d.example", "127.0.0.1"}
	kinds := []pharox.OutcomeKind{pharox.OutcomeSuccess, pharox.OutcomeFailure, pharox.OutcomeFailure, pharox.OutcomeBanned}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 20))
	ref := make(map[uuid.UUID]map[string]pharox.TargetState)
	at := time.Now().UTC().Truncate(time.Millisecond).Add(-48 * time.Hour)
	for i := range 400 {
		proxy := ps[rng.IntN(len(ps))].ID
		o := pharox.TargetOutcome{
			ProxyID: proxy, Target: targets[rng.IntN(len(targets))], Kind: kinds[rng.IntN(len(kinds))],
			StatusCode: []int{0, 403, 429}[rng.IntN(3)], Reason: fmt.Sprintf("r%d", i),
		}
		// Steps from nothing to past the retention, in milliseconds.
		switch rng.IntN(10) {
		case 0:
			at = at.Add(time.Duration(rng.IntN(40)) * time.Minute)
		case 1, 2, 3:
			at = at.Add(time.Duration(rng.IntN(10*60_000)) * time.Millisecond)
		default:
			at = at.Add(time.Duration(rng.IntN(5000)) * time.Millisecond)
		}
		o.At = at
		entries := ref[proxy]
		if entries == nil {
			entries = make(map[string]pharox.TargetState)
			ref[proxy] = entries
		}
		old, ok := entries[o.Target]
		if !ok {
			for len(entries) >= p.MaxTargetsPerProxy {
				var victim *pharox.TargetState
				for _, st := range entries {
					if victim == nil || st.IdleSince().Before(victim.IdleSince()) ||
						st.IdleSince().Equal(victim.IdleSince()) && st.Target < victim.Target {
						victim = &st
					}
				}
				delete(entries, victim.Target)
			}
		}
		want := old.Apply(o, p, at)
		entries[o.Target] = want
		wantN := 0
		for _, st := range entries {
			if st.RecentlyBanned(at, p.EscalateWindow) {
				wantN++
			}
		}
		got, n, err := ts.ApplyTargetOutcome(f.ctx, o, p)
		if err != nil {
			t.Fatalf("seed %d step %d: ApplyTargetOutcome(%+v): %v", seed, i, o, err)
		}
		if diff := diffTargetState(got, &want); diff != "" {
			t.Fatalf("seed %d step %d: after %s for %q at %v: %s", seed, i, o.Kind, o.Target, at, diff)
		}
		if n != wantN {
			t.Fatalf("seed %d step %d: recent-ban count %d, reference %d", seed, i, n, wantN)
		}
	}
	for _, x := range ps {
		sts, err := ts.ListTargetStates(f.ctx, x.ID)
		if err != nil {
			t.Fatal(err)
		}
		entries := ref[x.ID]
		if len(sts) != len(entries) {
			t.Fatalf("seed %d: proxy has %d entries, reference %d", seed, len(sts), len(entries))
		}
		for _, st := range sts {
			want, ok := entries[st.Target]
			if !ok {
				t.Fatalf("seed %d: stored entry %q the reference evicted", seed, st.Target)
			}
			if diff := diffTargetState(st, &want); diff != "" {
				t.Fatalf("seed %d: listed %q: %s", seed, st.Target, diff)
			}
		}
	}
}

// diffTargetState describes how got differs from want, or returns "".
func diffTargetState(got, want *pharox.TargetState) string {
	if got == nil {
		return "store returned no state"
	}
	eqT := func(a, b *time.Time) bool { return a == nil && b == nil || a != nil && b != nil && a.Equal(*b) }
	switch {
	case got.ProxyID != want.ProxyID || got.Target != want.Target:
		return fmt.Sprintf("entry (%s, %q), want (%s, %q)", got.ProxyID, got.Target, want.ProxyID, want.Target)
	case got.FailureStreak != want.FailureStreak || got.Bans != want.Bans:
		return fmt.Sprintf("streak %d bans %d, reference %d and %d", got.FailureStreak, got.Bans, want.FailureStreak, want.Bans)
	case !eqT(got.CoolingUntil, want.CoolingUntil) || !eqT(got.BannedAt, want.BannedAt):
		return fmt.Sprintf("cooling until %v banned at %v, reference %v and %v", tp(got.CoolingUntil), tp(got.BannedAt), tp(want.CoolingUntil), tp(want.BannedAt))
	case got.LastReason != want.LastReason || got.LastStatusCode != want.LastStatusCode:
		return fmt.Sprintf("last reason %q code %d, reference %q and %d", got.LastReason, got.LastStatusCode, want.LastReason, want.LastStatusCode)
	case !eqT(got.LastSuccessAt, want.LastSuccessAt) || !eqT(got.LastFailureAt, want.LastFailureAt):
		return fmt.Sprintf("last success %v failure %v, reference %v and %v", tp(got.LastSuccessAt), tp(got.LastFailureAt), tp(want.LastSuccessAt), tp(want.LastFailureAt))
	case !got.UpdatedAt.Equal(want.UpdatedAt):
		return fmt.Sprintf("updated at %v, reference %v", got.UpdatedAt, want.UpdatedAt)
	}
	return ""
}

func tp(t *time.Time) string {
	if t == nil {
		return "<nil>"
	}
	return t.String()
}

// testTargetConcurrent has many goroutines acquire for one target, ban
// the proxies they got at random and release them. Afterwards every lease
// taken for the target is checked against every cool-down the store
// reported: no acquisition called after a ban of its proxy had returned
// may have taken the proxy before that cool-down's end. (An acquisition
// running while the ban is being applied may go either way: a store that
// is not one lock reads the ban's clock before the ban commits, and a
// reported outcome's At may lie in the past anyway.)
func testTargetConcurrent(t *testing.T, f *fixture) {
	ts := f.targetStore()
	pool := f.pool("targets")
	f.addN(pool, 12, 2)
	p := targetPolicy()
	p.BaseCooldown, p.MaxCooldown = 200*time.Millisecond, 200*time.Millisecond
	const target = "shop.example"
	// done is when ApplyTargetOutcome returned (this process's clock);
	// until is the cool-down's end (the store's clock, as AcquiredAt).
	type ban struct{ done, until time.Time }
	type lease struct {
		called time.Time // when AcquireLease was called
		l      *pharox.Lease
	}
	var (
		mu     sync.Mutex
		bans   = map[uuid.UUID][]ban{}
		leases []lease
		errs   []error
	)
	var wg sync.WaitGroup
	deadline := time.Now().Add(time.Second)
	for g := range 12 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for time.Now().Before(deadline) {
				req := f.req(pool.Name)
				req.Target = target
				req.Strategy = pharox.AllStrategies[rng.IntN(len(pharox.AllStrategies))]
				called := time.Now()
				l, err := f.s.AcquireLease(f.ctx, req)
				if errors.Is(err, pharox.ErrNoProxyAvailable) {
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				var st *pharox.TargetState
				if rng.IntN(3) == 0 {
					st, _, err = ts.ApplyTargetOutcome(f.ctx, pharox.TargetOutcome{ProxyID: l.ProxyID, Target: target, Kind: pharox.OutcomeBanned}, p)
				}
				done := time.Now()
				_, rerr := f.s.ReleaseLease(f.ctx, l.ID, nil)
				mu.Lock()
				leases = append(leases, lease{called, l})
				if st != nil && st.BannedAt != nil && st.CoolingUntil != nil {
					bans[l.ProxyID] = append(bans[l.ProxyID], ban{done, *st.CoolingUntil})
				}
				errs = append(errs, errors.Join(err, rerr))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	nbans := 0
	for _, bs := range bans {
		nbans += len(bs)
	}
	if len(leases) == 0 || nbans == 0 {
		t.Fatalf("%d leases and %d cool-downs: the run exercised nothing", len(leases), nbans)
	}
	for _, x := range leases {
		for _, b := range bans[x.l.ProxyID] {
			if x.called.After(b.done) && x.l.AcquiredAt.Before(b.until) {
				t.Fatalf("lease %s on proxy %s for %q acquired at %v, by a call made after a ban of the proxy had returned, before its cool-down's end %v",
					x.l.ID, x.l.ProxyID, target, x.l.AcquiredAt, b.until)
			}
		}
	}
	t.Logf("%d leases for the target, %d cool-downs", len(leases), nbans)
}
