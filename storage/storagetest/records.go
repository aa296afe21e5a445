package storagetest

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

var leaseRecordTests = []subtest{
	{name: "ListFiltersAndOrder", fn: testListLeases},
	{name: "Purge", fn: testPurge},
}

func leaseIDs(ls []*pharox.Lease) []uuid.UUID {
	ids := make([]uuid.UUID, len(ls))
	for i, l := range ls {
		ids[i] = l.ID
	}
	return ids
}

// wantLeaseSet asserts that got holds exactly the leases want, oldest
// AcquiredAt first.
func wantLeaseSet(t testing.TB, what string, got []*pharox.Lease, want ...*pharox.Lease) {
	t.Helper()
	g := leaseIDs(got)
	w := leaseIDs(want)
	slices.SortFunc(g, compareID)
	slices.SortFunc(w, compareID)
	if !slices.Equal(g, w) {
		t.Fatalf("ListLeases(%s) = %d leases %v, want %d leases %v", what, len(g), g, len(w), w)
	}
	for i := 1; i < len(got); i++ {
		if got[i].AcquiredAt.Before(got[i-1].AcquiredAt) {
			t.Fatalf("ListLeases(%s) not ordered by AcquiredAt: %v before %v", what, got[i-1].AcquiredAt, got[i].AcquiredAt)
		}
	}
}

func testListLeases(t *testing.T, f *fixture) {
	one, nm := f.filterPool("records", map[string]pharox.Proxy{
		"x": {Country: "XX", MaxConcurrency: ptrutil.Ptr(10)}, "y": {Country: "YY", MaxConcurrency: ptrutil.Ptr(10)},
	})
	two := f.pool("records-two")
	z := f.addN(two, 1, 0)[0]
	other, err := f.s.EnsureConsumer(f.ctx, "records-other")
	if err != nil {
		t.Fatalf("EnsureConsumer: %v", err)
	}
	on := func(pool, country string, c *pharox.Consumer) *pharox.Lease {
		t.Helper()
		req := f.req(pool)
		req.ConsumerID, req.ConsumerName = c.ID, c.Name
		if country != "" {
			req.Filters = &pharox.Filters{Country: country}
		}
		return f.acquire(req)
	}
	l1 := on("records", "XX", f.consumer)
	l2 := on("records", "YY", other)
	l3 := on("records-two", "", f.consumer)
	l4 := on("records", "XX", other)
	l5 := on("records", "YY", f.consumer)
	f.release(l2.ID)
	f.release(l5.ID)
	if nm.of(l1.ProxyID) != "x" || nm.of(l2.ProxyID) != "y" || l3.ProxyID != z.ID {
		t.Fatalf("test setup: leases landed on %s, %s, %s", nm.of(l1.ProxyID), nm.of(l2.ProxyID), l3.ProxyID)
	}
	poolID := one["x"].PoolID

	all := f.leases(pharox.LeaseQuery{})
	wantLeaseSet(t, "no filter", all, l1, l2, l3, l4, l5)
	for _, l := range all {
		var want *pharox.Lease
		for _, w := range []*pharox.Lease{l1, l2, l3, l4, l5} {
			if w.ID == l.ID {
				want = w
			}
		}
		if l.ProxyID != want.ProxyID || l.PoolID != want.PoolID || l.PoolName != want.PoolName ||
			l.ConsumerID != want.ConsumerID || l.ConsumerName != want.ConsumerName || !l.AcquiredAt.Equal(want.AcquiredAt) {
			t.Fatalf("ListLeases lease %s = %+v, want the fields AcquireLease returned %+v", l.ID, l, want)
		}
	}
	wantLeaseSet(t, "pool", f.leases(pharox.LeaseQuery{PoolID: poolID}), l1, l2, l4, l5)
	wantLeaseSet(t, "other pool", f.leases(pharox.LeaseQuery{PoolID: two.ID}), l3)
	wantLeaseSet(t, "proxy", f.leases(pharox.LeaseQuery{ProxyID: one["x"].ID}), l1, l4)
	wantLeaseSet(t, "consumer", f.leases(pharox.LeaseQuery{ConsumerID: other.ID}), l2, l4)
	wantLeaseSet(t, "released", f.leases(pharox.LeaseQuery{Status: pharox.LeaseReleased}), l2, l5)
	wantLeaseSet(t, "active", f.leases(pharox.LeaseQuery{Status: pharox.LeaseActive}), l1, l3, l4)
	wantLeaseSet(t, "expired", f.leases(pharox.LeaseQuery{Status: pharox.LeaseExpired}))
	wantLeaseSet(t, "pool+consumer", f.leases(pharox.LeaseQuery{PoolID: poolID, ConsumerID: f.consumer.ID}), l1, l5)
	wantLeaseSet(t, "proxy+status", f.leases(pharox.LeaseQuery{ProxyID: one["y"].ID, Status: pharox.LeaseActive}))
	wantLeaseSet(t, "unknown pool", f.leases(pharox.LeaseQuery{PoolID: uuid.New()}))

	// Limit keeps the oldest.
	limited := f.leases(pharox.LeaseQuery{Limit: 2})
	if len(limited) != 2 {
		t.Fatalf("ListLeases(limit 2) = %d leases, want 2", len(limited))
	}
	for _, l := range limited {
		for _, o := range all {
			if !slices.Contains(leaseIDs(limited), o.ID) && o.AcquiredAt.Before(l.AcquiredAt) {
				t.Fatalf("ListLeases(limit 2) returned lease acquired at %v but left out an older one (%v)", l.AcquiredAt, o.AcquiredAt)
			}
		}
	}
	wantLeaseSet(t, "limit", limited, limited...)
	if got := f.leases(pharox.LeaseQuery{PoolID: poolID, Status: pharox.LeaseReleased, Limit: 10}); len(got) != 2 {
		t.Fatalf("ListLeases(pool, released, limit 10) = %d leases, want 2", len(got))
	}
}

func testPurge(t *testing.T, f *fixture) {
	pool := f.pool("purge")
	f.addN(pool, 2, 0)
	start := time.Now()
	released := []*pharox.Lease{f.acquire(f.req("purge")), f.acquire(f.req("purge"))}
	active := f.acquire(f.req("purge"))
	for _, l := range released {
		f.release(l.ID)
	}
	expired := f.shortLease("purge")
	time.Sleep(shortWait)
	if n, err := f.s.CleanupExpiredLeases(f.ctx); err != nil || n != 1 {
		t.Fatalf("CleanupExpiredLeases = %d, %v; want 1", n, err)
	}

	// Nothing ended an hour before the test started.
	n, err := f.s.PurgeEndedLeases(f.ctx, start.Add(-time.Hour))
	if err != nil || n != 0 {
		t.Fatalf("PurgeEndedLeases(an hour before the leases) = %d, %v; want 0", n, err)
	}
	wantLeaseSet(t, "after purging nothing", f.leases(pharox.LeaseQuery{}), released[0], released[1], active, expired)

	n, err = f.s.PurgeEndedLeases(f.ctx, time.Now().Add(time.Hour))
	if err != nil || n != 3 {
		t.Fatalf("PurgeEndedLeases(in an hour) = %d, %v; want 3 (two released, one expired)", n, err)
	}
	wantLeaseSet(t, "after purge", f.leases(pharox.LeaseQuery{}), active)
	for _, l := range append(released, expired) {
		_, err := f.s.GetLease(f.ctx, l.ID)
		wantErr(t, "GetLease of a purged lease", err, pharox.ErrLeaseNotFound)
	}
	if got := f.getLease(active.ID); got.Status != pharox.LeaseActive {
		t.Fatalf("active lease after purge = %s", got.Status)
	}
	f.wantCurrent(active.ProxyID, 1)
	f.release(active.ID)
	if n, err := f.s.PurgeEndedLeases(f.ctx, time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("second PurgeEndedLeases = %d, %v; want 1", n, err)
	}
}
