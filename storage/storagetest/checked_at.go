package storagetest

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var checkedAtTests = []subtest{
	{name: "AddedProxyUnchecked", fn: testCheckedAtAdded},
	{name: "ZeroCheckedAtStaysZero", fn: testCheckedAtZero},
}

// testCheckedAtAdded: AddProxies ignores the input's health fields, so a
// new proxy has never been checked, whatever the input said.
func testCheckedAtAdded(t *testing.T, f *fixture) {
	pool := f.pool("chk-added")
	in := f.proxy(pool)
	at := time.Now().UTC().Add(-time.Hour)
	in.CheckedAt = &at
	plain := f.proxy(pool)
	for _, p := range f.add(in, plain) {
		if got := f.getProxy(p.ID); got.CheckedAt != nil {
			t.Fatalf("added proxy %s has CheckedAt %v, want none (never checked)", p.ID, *got.CheckedAt)
		}
	}
}

// testCheckedAtZero: a health result with a zero CheckedAt is stored as
// that zero time, not replaced by the store's clock: every store keeps it,
// so first_available orders such a proxy the same everywhere, after every
// proxy checked at a real time and before the never-checked ones.
func testCheckedAtZero(t *testing.T, f *fixture) {
	pool := f.pool("chk-zero")
	ps := f.addN(pool, 3, 1)
	nm := names{ps[0].ID: "checked-now", ps[1].ID: "checked-zero", ps[2].ID: "never"}
	now := time.Now().UTC().Truncate(time.Millisecond)
	if _, err := f.s.ApplyHealthCheckResult(f.ctx, pharox.HealthCheckResult{ProxyID: ps[0].ID, Status: pharox.StatusActive, CheckedAt: now}); err != nil {
		t.Fatalf("ApplyHealthCheckResult(checked-now): %v", err)
	}
	got, err := f.s.ApplyHealthCheckResult(f.ctx, pharox.HealthCheckResult{ProxyID: ps[1].ID, Status: pharox.StatusActive})
	if err != nil {
		t.Fatalf("ApplyHealthCheckResult with a zero CheckedAt: %v", err)
	}
	if got == nil || got.CheckedAt == nil || !got.CheckedAt.IsZero() {
		t.Fatalf("ApplyHealthCheckResult with a zero CheckedAt returned CheckedAt %v, want the zero time", checkedOf(got))
	}
	if stored := f.getProxy(ps[1].ID); stored.CheckedAt == nil || !stored.CheckedAt.IsZero() {
		t.Fatalf("GetProxy after a result with a zero CheckedAt: CheckedAt %v, want the zero time", checkedOf(stored))
	}

	var ref []*pharox.Proxy
	for _, p := range ps {
		ref = append(ref, f.getProxy(p.ID))
	}
	slices.SortFunc(ref, pharox.CompareFirstAvailable)
	want := []string{"checked-now", "checked-zero", "never"}
	if got := nm.list(proxyIDs(ref)); !slices.Equal(got, want) {
		t.Fatalf("test bug: CompareFirstAvailable order %v, expected %v", got, want)
	}
	var leased []string
	for range ps {
		leased = append(leased, nm.of(f.acquire(f.req("chk-zero")).ProxyID))
	}
	if !slices.Equal(leased, want) {
		t.Fatalf("first_available leased in order %v, want %v (a zero CheckedAt is the oldest check, before never-checked)", leased, want)
	}
}

func checkedOf(p *pharox.Proxy) any {
	if p == nil {
		return "<nil proxy>"
	}
	return deref(p.CheckedAt)
}

func proxyIDs(ps []*pharox.Proxy) []uuid.UUID {
	ids := make([]uuid.UUID, len(ps))
	for i, p := range ps {
		ids[i] = p.ID
	}
	return ids
}
