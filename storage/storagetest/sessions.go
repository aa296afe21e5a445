package storagetest

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

var sessionTests = []subtest{
	{name: "StickyWhileFree", fn: testSessionSticky},
	{name: "FailoverAndRebind", fn: testSessionFailover},
	{name: "KeysIndependent", fn: testSessionKeysIndependent},
	{name: "BindingRespectsFilters", fn: testSessionFilters},
	{name: "BoundProxyDeleted", fn: testSessionBoundProxyDeleted},
	{name: "SlowBoundProxyStays", fn: testSessionSlowBound},
	{name: "BindingExpires", fn: testSessionExpires},
	{name: "UseRefreshesBinding", fn: testSessionRefresh},
}

// sticky returns a least_used request with a session key: least_used would
// move to another proxy after each lease, so staying put proves the binding.
func (f *fixture) sticky(pool, key string) pharox.AcquireRequest {
	req := f.req(pool)
	req.Strategy = pharox.LeastUsed
	req.SessionKey = key
	req.SessionTTL = time.Hour
	return req
}

func testSessionSticky(t *testing.T, f *fixture) {
	pool := f.pool("sticky")
	f.addN(pool, 3, 0)
	req := f.sticky("sticky", "user-42")
	first := f.acquire(req)
	if first.SessionKey != "user-42" {
		t.Fatalf("lease SessionKey = %q, want user-42", first.SessionKey)
	}
	if got := f.getLease(first.ID); got.SessionKey != "user-42" {
		t.Fatalf("GetLease SessionKey = %q, want user-42", got.SessionKey)
	}
	for i := range 5 {
		if l := f.acquire(req); l.ProxyID != first.ProxyID {
			t.Fatalf("sticky lease %d on %s, want the bound proxy %s", i+2, l.ProxyID, first.ProxyID)
		}
	}
	// Releasing does not end the binding.
	for _, l := range f.leases(pharox.LeaseQuery{Status: pharox.LeaseActive}) {
		f.release(l.ID)
	}
	if l := f.acquire(req); l.ProxyID != first.ProxyID {
		t.Fatalf("sticky lease after releases on %s, want %s", l.ProxyID, first.ProxyID)
	}
	// Without the key, least_used goes elsewhere.
	plain := req
	plain.SessionKey, plain.SessionTTL = "", 0
	if l := f.acquire(plain); l.ProxyID == first.ProxyID {
		t.Fatalf("least_used without a session key chose the busiest proxy %s", first.ProxyID)
	}
}

func testSessionFailover(t *testing.T, f *fixture) {
	pool := f.pool("failover")
	ps := f.addN(pool, 2, 2)
	req := f.sticky("failover", "k")
	a1 := f.acquire(req)
	p := a1.ProxyID
	q := ps[0].ID
	if q == p {
		q = ps[1].ID
	}
	nm := names{p: "p (bound first)", q: "q"}
	a2 := f.acquire(req)
	if a2.ProxyID != p {
		t.Fatalf("second sticky lease on %s, want %s", nm.of(a2.ProxyID), nm.of(p))
	}
	// p is full: fail over to q and re-bind the key to it.
	a3 := f.acquire(req)
	if a3.ProxyID != q {
		t.Fatalf("sticky lease with the bound proxy full on %s, want %s", nm.of(a3.ProxyID), nm.of(q))
	}
	f.release(a1.ID)
	f.release(a2.ID)
	// p is empty and least_used would pick it; the key now belongs to q.
	a4 := f.acquire(req)
	if a4.ProxyID != q {
		t.Fatalf("sticky lease after failover on %s, want the re-bound %s", nm.of(a4.ProxyID), nm.of(q))
	}
	// q is full anyway; make it inactive too, then fail over to p.
	f.setStatus(q, pharox.StatusInactive)
	a5 := f.acquire(req)
	if a5.ProxyID != p {
		t.Fatalf("sticky lease with the bound proxy inactive on %s, want %s", nm.of(a5.ProxyID), nm.of(p))
	}
	// q comes back empty; least_used would pick it, the key stays on p.
	f.setStatus(q, pharox.StatusActive)
	f.release(a3.ID)
	f.release(a4.ID)
	if l := f.acquire(req); l.ProxyID != p {
		t.Fatalf("sticky lease after re-binding to %s went to %s", nm.of(p), nm.of(l.ProxyID))
	}

	// Inactive without being full: fail over too.
	f.setStatus(p, pharox.StatusInactive)
	if l := f.acquire(req); l.ProxyID != q {
		t.Fatalf("sticky lease with the bound proxy inactive (not full) on %s, want %s", nm.of(l.ProxyID), nm.of(q))
	}
}

func testSessionKeysIndependent(t *testing.T, f *fixture) {
	pool := f.pool("keys")
	f.addN(pool, 3, 0)
	bound := map[string]uuid.UUID{}
	for _, k := range []string{"a", "b", "c"} {
		bound[k] = f.acquire(f.sticky("keys", k)).ProxyID
	}
	// least_used spreads the three first leases over three proxies.
	if bound["a"] == bound["b"] || bound["b"] == bound["c"] || bound["a"] == bound["c"] {
		t.Fatalf("least_used put fresh keys on %v, want three different proxies", bound)
	}
	for range 3 {
		for _, k := range []string{"c", "a", "b"} {
			if l := f.acquire(f.sticky("keys", k)); l.ProxyID != bound[k] {
				t.Fatalf("key %s leased %s, want its own bound proxy %s", k, l.ProxyID, bound[k])
			}
		}
	}
	// The same key in another pool is another session.
	other := f.pool("keys-other")
	op := f.addN(other, 1, 0)[0]
	if l := f.acquire(f.sticky("keys-other", "a")); l.ProxyID != op.ID {
		t.Fatalf("key a in another pool leased %s, want that pool's proxy %s", l.ProxyID, op.ID)
	}
	if l := f.acquire(f.sticky("keys", "a")); l.ProxyID != bound["a"] {
		t.Fatalf("key a back in the first pool leased %s, want %s", l.ProxyID, bound["a"])
	}
}

func testSessionFilters(t *testing.T, f *fixture) {
	_, nm := f.filterPool("sess-filter", map[string]pharox.Proxy{
		"ar": {Country: "AR", MaxConcurrency: ptrutil.Ptr(5)}, "uy": {Country: "UY", MaxConcurrency: ptrutil.Ptr(5)},
	})
	req := f.sticky("sess-filter", "k")
	req.Filters = &pharox.Filters{Country: "AR"}
	l := f.acquire(req)
	if nm.of(l.ProxyID) != "ar" {
		t.Fatalf("filtered sticky lease on %s, want ar", nm.of(l.ProxyID))
	}
	f.release(l.ID)
	// The bound proxy does not match the new filters: it is no candidate.
	req.Filters = &pharox.Filters{Country: "UY"}
	l = f.acquire(req)
	if nm.of(l.ProxyID) != "uy" {
		t.Fatalf("sticky lease with filters excluding the bound proxy on %s, want uy", nm.of(l.ProxyID))
	}
	// The key followed it: uy holds a lease, so least_used alone would
	// pick ar.
	req.Filters = nil
	if l := f.acquire(req); nm.of(l.ProxyID) != "uy" {
		t.Fatalf("sticky lease without filters on %s, want the re-bound uy", nm.of(l.ProxyID))
	}
}

func testSessionExpires(t *testing.T, f *fixture) {
	// Two pools, two proxies each. In both, the key's first lease is held,
	// so least_used alone would choose the other proxy next.
	bind := func(pool, key string, ttl time.Duration) (pharox.AcquireRequest, uuid.UUID, uuid.UUID) {
		t.Helper()
		ps := f.addN(f.pool(pool), 2, 0)
		req := f.sticky(pool, key)
		req.SessionTTL = ttl
		bound := f.acquire(req).ProxyID
		other := ps[0].ID
		if other == bound {
			other = ps[1].ID
		}
		return req, bound, other
	}
	shortReq, shortBound, shortOther := bind("ttl-short", "s", shortTTL)
	longReq, longBound, _ := bind("ttl-long", "l", time.Hour)
	time.Sleep(shortWait)

	if l := f.acquire(longReq); l.ProxyID != longBound {
		t.Fatalf("session with a 1h TTL moved after %v from %s to %s", shortWait, longBound, l.ProxyID)
	}
	if l := f.acquire(shortReq); l.ProxyID != shortOther {
		t.Fatalf("session with a %v TTL still leased its bound proxy %s after %v; want a fresh least_used choice %s",
			shortTTL, shortBound, shortWait, shortOther)
	}
}

func testSessionBoundProxyDeleted(t *testing.T, f *fixture) {
	pool := f.pool("sess-deleted")
	f.addN(pool, 2, 0)
	req := f.sticky("sess-deleted", "k")
	l := f.acquire(req)
	f.release(l.ID)
	if err := f.s.DeleteProxy(f.ctx, l.ProxyID); err != nil {
		t.Fatalf("DeleteProxy: %v", err)
	}
	l2 := f.acquire(req)
	if l2.ProxyID == l.ProxyID {
		t.Fatalf("sticky lease on the deleted proxy %s", l.ProxyID)
	}
	// Re-bound to the survivor: it stays there even with more leases than
	// a fresh proxy.
	fresh := f.addN(pool, 1, 0)[0]
	if l3 := f.acquire(req); l3.ProxyID != l2.ProxyID {
		t.Fatalf("sticky lease after re-binding on %s, want %s (not the new, emptier %s)", l3.ProxyID, l2.ProxyID, fresh.ID)
	}
}

// testSessionRefresh checks that each use extends the binding to now +
// SessionTTL: uses 350ms apart keep a 600ms binding alive past 600ms after
// it was made. The margins (250ms either way) leave room for slow stores.
func testSessionRefresh(t *testing.T, f *fixture) {
	pool := f.pool("sess-refresh")
	ps := f.addN(pool, 2, 0)
	req := f.sticky("sess-refresh", "k")
	req.SessionTTL = 600 * time.Millisecond
	prevStart := time.Now()
	bound := f.acquire(req).ProxyID // held: least_used alone would move
	for i := range 2 {
		time.Sleep(350 * time.Millisecond)
		start := time.Now()
		l := f.acquire(req)
		if l.ProxyID != bound {
			// The previous use refreshed the binding at some point
			// during its call; this call checked it before returning.
			if gap := time.Since(prevStart); gap >= req.SessionTTL {
				t.Skipf("store too slow for this check: %v between uses exceeds the %v TTL", gap, req.SessionTTL)
			}
			t.Fatalf("use %d, %v after the previous one: session moved from %s to %s (ids %s, %s)",
				i+2, 350*time.Millisecond, bound, l.ProxyID, ps[0].ID, ps[1].ID)
		}
		prevStart = start
	}
}

// testSessionSlowBound: a slow proxy is still a candidate, so a live
// binding keeps it even though ranking strategies prefer active proxies.
func testSessionSlowBound(t *testing.T, f *fixture) {
	pool := f.pool("sess-slow")
	f.addN(pool, 3, 0)
	req := f.req("sess-slow")
	req.SessionKey, req.SessionTTL = "k", time.Hour
	bound := f.acquire(req).ProxyID
	f.setStatus(bound, pharox.StatusSlow)
	for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed} {
		req.Strategy = st
		if l := f.acquire(req); l.ProxyID != bound {
			t.Fatalf("%s with a live binding to a slow proxy leased %s, want the bound %s", st, l.ProxyID, bound)
		}
	}
	// Without the key, the slow proxy comes last.
	plain := f.req("sess-slow")
	if l := f.acquire(plain); l.ProxyID == bound {
		t.Fatalf("first_available without a session chose the slow proxy over two active ones")
	}
}
