package storagetest

import (
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var stickyConcurrencyTests = []subtest{
	{name: "ConcurrentFirstUseOneProxy", fn: testStickyConcurrentFirstUse},
	{name: "HitKeepsRoundRobinPosition", fn: testStickyHitKeepsRoundRobin},
}

// testStickyConcurrentFirstUse starts several acquisitions with one new
// session key at once, on a pool whose proxies all have room. The first
// one to bind the key decides the proxy; the others must see that binding,
// however they interleave, and land on the same proxy. least_used would
// spread separate callers over the pool, so anything else shows.
func testStickyConcurrentFirstUse(t *testing.T, f *fixture) {
	const callers = 8
	pool := f.pool("sticky-race")
	f.addN(pool, 4, 0)
	// A few rounds with fresh keys, each with a new chance to interleave.
	for round := range 4 {
		req := f.sticky("sticky-race", "race-"+string(rune('a'+round)))
		start := make(chan struct{})
		got := make([]uuid.UUID, callers)
		errs := make([]error, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				<-start
				l, err := f.s.AcquireLease(f.ctx, req)
				if err == nil {
					got[i] = l.ProxyID
				}
				errs[i] = err
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: concurrent sticky acquisition %d: %v", round, i, err)
			}
		}
		for i := range got {
			if got[i] != got[0] {
				t.Fatalf("round %d: %d concurrent first uses of session key %q ended on %d different proxies (%v); want one",
					round, callers, req.SessionKey, countDistinct(got), got)
			}
		}
		// Later uses stay there too.
		if l := f.acquire(req); l.ProxyID != got[0] {
			t.Fatalf("round %d: sticky lease after the concurrent first use on %s, want %s", round, l.ProxyID, got[0])
		}
	}
}

func countDistinct(ids []uuid.UUID) int {
	seen := map[uuid.UUID]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	return len(seen)
}

// testStickyHitKeepsRoundRobin: a lease served from a live session binding
// is not a round_robin choice, so it must not move the pool's position.
// sticky, plain, sticky, plain on a fresh pool gives p0 p1 p0 p2.
func testStickyHitKeepsRoundRobin(t *testing.T, f *fixture) {
	pool := f.pool("sticky-rr")
	order := sortedIDs(f.addN(pool, 4, 0))
	nm := names{order[0]: "p0", order[1]: "p1", order[2]: "p2", order[3]: "p3"}
	sticky := f.sticky("sticky-rr", "k")
	sticky.Strategy = pharox.RoundRobin
	plain := f.req("sticky-rr")
	plain.Strategy = pharox.RoundRobin

	s1 := f.acquire(sticky).ProxyID // binds the key: a round_robin choice
	p1 := f.acquire(plain).ProxyID
	s2 := f.acquire(sticky).ProxyID // a hit: no choice made
	p2 := f.acquire(plain).ProxyID
	got := nm.list([]uuid.UUID{s1, p1, s2, p2})
	if s2 != s1 {
		t.Fatalf("sticky, plain, sticky, plain under round_robin gave %v: the key moved", got)
	}
	if want := rrNext(order, s1); p1 != want {
		t.Fatalf("sticky, plain, sticky, plain under round_robin gave %v: the plain lease after binding %s went to %s, want %s",
			got, nm.of(s1), nm.of(p1), nm.of(want))
	}
	if want := rrNext(order, p1); p2 != want {
		t.Fatalf("sticky, plain, sticky, plain under round_robin gave %v, want the second plain lease on %s: the sticky hit moved the round-robin position",
			got, nm.of(want))
	}
}
