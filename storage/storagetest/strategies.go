package storagetest

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var strategyTests = []subtest{
	{name: "FirstAvailableOrder", fn: testFirstAvailableOrder},
	{name: "LeastUsed", fn: testLeastUsed},
	{name: "RoundRobinContinues", fn: testRoundRobin},
	{name: "RoundRobinSkipsFullAndWraps", fn: testRoundRobinSkipsFull},
	{name: "RoundRobinPositionOnlyMovedByRoundRobin", fn: testRoundRobinPosition},
	{name: "Random", fn: testRandom},
	{name: "HonourFilters", fn: testStrategiesHonourFilters},
}

func testFirstAvailableOrder(t *testing.T, f *fixture) {
	pool := f.pool("fa")
	ps := f.addN(pool, 7, 1)
	labels := []string{"old", "recent", "never1", "never2", "slow-newest", "slow-never", "future-inactive"}
	nm := names{}
	byLabel := map[string]*pharox.Proxy{}
	for i, p := range ps {
		nm[p.ID] = labels[i]
		byLabel[labels[i]] = p
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	check := func(label string, st pharox.ProxyStatus, at time.Time) {
		t.Helper()
		r := pharox.HealthCheckResult{ProxyID: byLabel[label].ID, Status: st, CheckedAt: at, Latency: 10 * time.Millisecond}
		if _, err := f.s.ApplyHealthCheckResult(f.ctx, r); err != nil {
			t.Fatalf("ApplyHealthCheckResult(%s): %v", label, err)
		}
	}
	check("old", pharox.StatusActive, now.Add(-time.Hour))
	check("recent", pharox.StatusActive, now.Add(-time.Minute))
	check("slow-newest", pharox.StatusSlow, now)
	f.setStatus(byLabel["slow-never"].ID, pharox.StatusSlow)
	check("future-inactive", pharox.StatusInactive, now.Add(time.Hour))

	// Reference order from the stored proxies.
	var cands []*pharox.Proxy
	for _, p := range ps {
		if got := f.getProxy(p.ID); got.Status.Leasable() {
			cands = append(cands, got)
		}
	}
	slices.SortFunc(cands, pharox.CompareFirstAvailable)
	var want []string
	for _, p := range cands {
		want = append(want, nm.of(p.ID))
	}
	never := []string{"never1", "never2"}
	if compareID(byLabel["never2"].ID, byLabel["never1"].ID) < 0 {
		never = []string{"never2", "never1"}
	}
	if hard := append(append([]string{"recent", "old"}, never...), "slow-newest", "slow-never"); !slices.Equal(want, hard) {
		t.Fatalf("test bug: CompareFirstAvailable order %v, expected %v", want, hard)
	}

	p, err := f.s.FindAvailableProxy(f.ctx, "fa", nil, pharox.FirstAvailable)
	if err != nil || p.ID != cands[0].ID {
		t.Fatalf("FindAvailableProxy(first_available) = %v, %v; want %s", p, err, want[0])
	}
	var got []string
	leases := map[string]*pharox.Lease{}
	for range want {
		l := f.acquire(f.req("fa"))
		got = append(got, nm.of(l.ProxyID))
		leases[nm.of(l.ProxyID)] = l
	}
	if !slices.Equal(got, want) {
		t.Fatalf("first_available leased in order %v, want %v (active before slow, checked_at desc, never-checked last, then id)", got, want)
	}
	f.noProxy(f.req("fa"), "every leasable proxy taken")

	// Freed slots are taken again in the same order.
	f.release(leases["never1"].ID)
	f.release(leases["slow-newest"].ID)
	f.release(leases["old"].ID)
	for _, w := range []string{"old", "never1", "slow-newest"} {
		if l := f.acquire(f.req("fa")); nm.of(l.ProxyID) != w {
			t.Fatalf("after releases first_available leased %s, want %s", nm.of(l.ProxyID), w)
		}
	}
}

func testLeastUsed(t *testing.T, f *fixture) {
	pool := f.pool("lu")
	ps := f.addN(pool, 4, 0)
	slow := ps[3]
	f.setStatus(slow.ID, pharox.StatusSlow)
	active := sortedIDs(ps[:3])
	nm := names{active[0]: "p0", active[1]: "p1", active[2]: "p2", slow.ID: "slow"}

	counts := map[uuid.UUID]int{}
	held := map[uuid.UUID][]*pharox.Lease{}
	// next is the reference choice from the test's own count of leases.
	next := func() uuid.UUID {
		var cands []*pharox.Proxy
		for _, p := range ps {
			c := f.getProxy(p.ID).Clone()
			c.CurrentLeases = counts[p.ID]
			cands = append(cands, c)
		}
		return slices.MinFunc(cands, pharox.CompareLeastUsed).ID
	}
	req := f.req("lu")
	req.Strategy = pharox.LeastUsed
	var seq []string
	take := func(step string) {
		t.Helper()
		want := next()
		l := f.acquire(req)
		if l.ProxyID != want {
			t.Fatalf("least_used %s: leased %s, want %s (lease counts %v)", step, nm.of(l.ProxyID), nm.of(want), countsByName(nm, counts))
		}
		counts[l.ProxyID]++
		held[l.ProxyID] = append(held[l.ProxyID], l)
		seq = append(seq, nm.of(l.ProxyID))
	}
	drop := func(id uuid.UUID) {
		t.Helper()
		l := held[id][0]
		held[id] = held[id][1:]
		f.release(l.ID)
		counts[id]--
	}

	for range 6 {
		take("initial")
	}
	if want := []string{"p0", "p1", "p2", "p0", "p1", "p2"}; !slices.Equal(seq, want) {
		t.Fatalf("least_used sequence %v, want %v", seq, want)
	}
	drop(active[1])
	take("after releasing from p1") // p1 has fewest now
	drop(active[2])
	drop(active[2])
	take("after emptying p2")
	take("p2 again")
	take("tie")
	// The slow proxy, with no leases at all, was never chosen while
	// active proxies were leasable.
	if counts[slow.ID] != 0 {
		t.Fatalf("least_used chose the slow proxy over active ones")
	}
	for _, id := range active {
		f.setStatus(id, pharox.StatusInactive)
	}
	if l := f.acquire(req); l.ProxyID != slow.ID {
		t.Fatalf("with every active proxy inactive, least_used leased %s, want slow", nm.of(l.ProxyID))
	}
}

func countsByName(nm names, counts map[uuid.UUID]int) map[string]int {
	out := map[string]int{}
	for id, n := range counts {
		out[nm.of(id)] = n
	}
	return out
}

// rrOrder returns the proxy after id in cyclic id order.
func rrNext(order []uuid.UUID, id uuid.UUID) uuid.UUID {
	i := slices.Index(order, id)
	return order[(i+1)%len(order)]
}

func testRoundRobin(t *testing.T, f *fixture) {
	pool := f.pool("rr")
	ps := f.addN(pool, 4, 0)
	order := sortedIDs(ps)
	nm := names{order[0]: "p0", order[1]: "p1", order[2]: "p2", order[3]: "p3"}
	req := f.req("rr")
	req.Strategy = pharox.RoundRobin
	// Another pool, interleaved: each pool keeps its own position.
	other := f.pool("rr-other")
	otherOrder := sortedIDs(f.addN(other, 3, 0))
	otherReq := f.req("rr-other")
	otherReq.Strategy = pharox.RoundRobin

	var got []string
	prev := f.acquire(req).ProxyID
	otherPrev := f.acquire(otherReq).ProxyID
	got = append(got, nm.of(prev))
	// Nine more separate calls: each continues after the previous one,
	// wrapping around the id order twice.
	for range 9 {
		l := f.acquire(req)
		got = append(got, nm.of(l.ProxyID))
		if want := rrNext(order, prev); l.ProxyID != want {
			t.Fatalf("round_robin sequence %v: after %s got %s, want %s", got, nm.of(prev), nm.of(l.ProxyID), nm.of(want))
		}
		prev = l.ProxyID
		o := f.acquire(otherReq)
		if want := rrNext(otherOrder, otherPrev); o.ProxyID != want {
			t.Fatalf("round_robin in a second pool, interleaved: got %s after %s, want %s", o.ProxyID, otherPrev, want)
		}
		otherPrev = o.ProxyID
	}
}

func testRoundRobinSkipsFull(t *testing.T, f *fixture) {
	pool := f.pool("rr-full")
	ps := f.addN(pool, 4, 1)
	order := sortedIDs(ps)
	nm := names{order[0]: "p0", order[1]: "p1", order[2]: "p2", order[3]: "p3"}
	req := f.req("rr-full")
	req.Strategy = pharox.RoundRobin
	var seq []*pharox.Lease
	for range 4 {
		seq = append(seq, f.acquire(req))
	}
	for i := 1; i < 4; i++ {
		if want := rrNext(order, seq[i-1].ProxyID); seq[i].ProxyID != want {
			t.Fatalf("round_robin lease %d on %s, want %s", i, nm.of(seq[i].ProxyID), nm.of(want))
		}
	}
	f.noProxy(req, "round_robin with every exclusive proxy taken")
	// Free the 2nd and 3rd handed out. The last handed out was the 4th, so
	// the next candidates in order are: 1st (full, skipped), 2nd, then 3rd.
	f.release(seq[1].ID)
	f.release(seq[2].ID)
	for _, want := range []uuid.UUID{seq[1].ProxyID, seq[2].ProxyID} {
		if l := f.acquire(req); l.ProxyID != want {
			t.Fatalf("round_robin after releases leased %s, want %s (skip full, continue after last, wrap)", nm.of(l.ProxyID), nm.of(want))
		}
	}
	// Free the 1st: last handed out is the 3rd, so wrap past the full 4th
	// to the 1st.
	f.release(seq[0].ID)
	if l := f.acquire(req); l.ProxyID != seq[0].ProxyID {
		t.Fatalf("round_robin leased %s, want %s", nm.of(l.ProxyID), nm.of(seq[0].ProxyID))
	}
}

func testRoundRobinPosition(t *testing.T, f *fixture) {
	pool := f.pool("rr-pos")
	ps := f.addN(pool, 4, 0)
	order := sortedIDs(ps)
	nm := names{order[0]: "p0", order[1]: "p1", order[2]: "p2", order[3]: "p3"}
	req := f.req("rr-pos")
	req.Strategy = pharox.RoundRobin
	// Advance until the last handed out is not p0, which first_available
	// takes (unlimited proxies, none checked: lowest id), so that a
	// wrongly moved position would show.
	last := f.acquire(req).ProxyID
	if last == order[0] {
		last = f.acquire(req).ProxyID
	}
	fa := f.acquire(f.req("rr-pos"))
	if fa.ProxyID != order[0] {
		t.Fatalf("first_available leased %s, want p0 (lowest id among unchecked active proxies)", nm.of(fa.ProxyID))
	}
	lu := f.req("rr-pos")
	lu.Strategy = pharox.LeastUsed
	f.acquire(lu)
	want := rrNext(order, last)
	for i := range 3 {
		p, err := f.s.FindAvailableProxy(f.ctx, "rr-pos", nil, pharox.RoundRobin)
		if err != nil {
			t.Fatalf("FindAvailableProxy(round_robin): %v", err)
		}
		if p.ID != want {
			t.Fatalf("FindAvailableProxy(round_robin) call %d = %s, want %s (after the last round_robin lease %s)", i+1, nm.of(p.ID), nm.of(want), nm.of(last))
		}
	}
	if l := f.acquire(req); l.ProxyID != want {
		t.Fatalf("round_robin after other strategies and FindAvailableProxy leased %s, want %s (continuing after %s)",
			nm.of(l.ProxyID), nm.of(want), nm.of(last))
	}
}

func testRandom(t *testing.T, f *fixture) {
	pool := f.pool("random")
	ps := f.addN(pool, 5, 0)
	f.setStatus(ps[4].ID, pharox.StatusInactive)
	free := ps[:4]
	req := f.req("random")
	req.Strategy = pharox.Random
	// 100 draws over 4 unlimited proxies, all held: a fair choice misses
	// one with probability 4 * (3/4)^100, about 1e-12.
	const draws = 100
	hits := map[uuid.UUID]int{}
	for range draws {
		hits[f.acquire(req).ProxyID]++
	}
	if hits[ps[4].ID] != 0 {
		t.Fatalf("random leased the inactive proxy %d times", hits[ps[4].ID])
	}
	for i, p := range free {
		if hits[p.ID] == 0 {
			t.Fatalf("random never chose proxy %d of 4 in %d draws (hits per proxy: %d %d %d %d)",
				i, draws, hits[free[0].ID], hits[free[1].ID], hits[free[2].ID], hits[free[3].ID])
		}
	}
}

func testStrategiesHonourFilters(t *testing.T, f *fixture) {
	proxies, nm := f.filterPool("strat-filter", map[string]pharox.Proxy{
		"ar1": {Country: "AR"}, "ar2": {Country: "AR"}, "ar3": {Country: "AR", Status: pharox.StatusSlow},
		"uy1": {Country: "UY"}, "uy2": {Country: "UY"}, "de": {Country: "DE"},
	})
	for _, st := range pharox.AllStrategies {
		req := f.req("strat-filter")
		req.Strategy = st
		req.Filters = &pharox.Filters{Country: "AR"}
		leases, err := f.drain(req, len(proxies)+1)
		if err != nil {
			t.Fatalf("%s with a filter: %v", st, err)
		}
		var got []string
		for _, l := range leases {
			got = append(got, nm.of(l.ProxyID))
		}
		slices.Sort(got)
		if want := []string{"ar1", "ar2", "ar3"}; !slices.Equal(got, want) {
			t.Fatalf("%s with country AR leased %v, want %v", st, got, want)
		}
		f.releaseAll(leases)
	}
}
