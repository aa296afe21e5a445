package storagetest

import (
	"errors"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

var expiryTests = []subtest{
	{name: "ExpiredLeaseFreesSlot", fn: testExpiredFreesSlot},
	{name: "ReleaseAfterExpiry", fn: testReleaseAfterExpiry},
	{name: "RenewAfterExpiry", fn: testRenewAfterExpiry},
	{name: "Cleanup", fn: testCleanup},
	{name: "FindIgnoresExpired", fn: testFindIgnoresExpired},
}

// beforeShortExpiry reports whether a short lease acquired after start
// cannot have expired yet, with 50ms to spare for clock differences. On a
// store too slow for that, checks that need live short leases are
// inconclusive rather than failed.
func beforeShortExpiry(start time.Time) bool { return time.Since(start) < shortTTL-50*time.Millisecond }

func (f *fixture) shortLease(pool string) *pharox.Lease {
	f.t.Helper()
	req := f.req(pool)
	req.Duration = shortTTL
	return f.acquire(req)
}

func testExpiredFreesSlot(t *testing.T, f *fixture) {
	pool := f.pool("expire")
	p := f.addN(pool, 1, 1)[0]
	old := f.shortLease("expire")
	time.Sleep(shortWait)

	// No cleanup: the acquisition itself must see that the old lease expired.
	l := f.acquire(f.req("expire"))
	if l.ProxyID != p.ID {
		t.Fatalf("lease on %s, want %s", l.ProxyID, p.ID)
	}
	if l.Proxy == nil || l.Proxy.CurrentLeases != 1 {
		t.Fatalf("snapshot after reclaiming the expired lease = %v, want CurrentLeases 1", l.Proxy)
	}
	f.wantCurrent(p.ID, 1)
	got := f.getLease(old.ID)
	if got.Status != pharox.LeaseExpired {
		t.Fatalf("reclaimed lease status = %s, want expired", got.Status)
	}
	if got.ExpiresAt.After(l.AcquiredAt) {
		t.Fatalf("new lease acquired at %v, before the old one expired at %v", l.AcquiredAt, got.ExpiresAt)
	}
	_, err := f.s.ReleaseLease(f.ctx, old.ID, nil)
	wantErr(t, "ReleaseLease of an expired, reclaimed lease", err, pharox.ErrLeaseNotActive)
	_, err = f.s.RenewLease(f.ctx, old.ID, time.Minute)
	wantErr(t, "RenewLease of an expired, reclaimed lease", err, pharox.ErrLeaseNotActive)
	// Neither call freed the new lease's slot.
	f.wantCurrent(p.ID, 1)
	if got := f.getLease(l.ID); got.Status != pharox.LeaseActive {
		t.Fatalf("new lease status = %s, want active", got.Status)
	}
	f.noProxy(f.req("expire"), "exclusive proxy leased again")
}

func testReleaseAfterExpiry(t *testing.T, f *fixture) {
	pool := f.pool("late")
	p := f.addN(pool, 1, 1)[0]
	l := f.shortLease("late")
	time.Sleep(shortWait)
	// Nothing reclaimed it: the store ends it as it declared, exactly
	// once, freeing exactly one slot.
	want := f.cfg.needLateRelease(t)
	r, err := f.s.ReleaseLease(f.ctx, l.ID, nil)
	switch want {
	case LateReleaseReleases:
		if err != nil {
			t.Fatalf("late ReleaseLease: %v; the store declares that it releases a lease past its expiry", err)
		}
		if r.Status != pharox.LeaseReleased || r.ReleasedAt == nil {
			t.Fatalf("late ReleaseLease = status %s released %v, want released", r.Status, r.ReleasedAt)
		}
		if got := f.getLease(l.ID); got.Status != pharox.LeaseReleased {
			t.Fatalf("GetLease after late release = %s, want released", got.Status)
		}
	case LateReleaseExpires:
		if !errors.Is(err, pharox.ErrLeaseNotActive) {
			t.Fatalf("late ReleaseLease = %v, %v; the store declares that it reclaims a lease past its expiry (ErrLeaseNotActive)", leaseStatus(r), err)
		}
		if got := f.getLease(l.ID); got.Status != pharox.LeaseExpired {
			t.Fatalf("late ReleaseLease said not active, but the lease is %s, want expired", got.Status)
		}
	}
	f.wantCurrent(p.ID, 0)
	_, err = f.s.ReleaseLease(f.ctx, l.ID, nil)
	wantErr(t, "second ReleaseLease after expiry", err, pharox.ErrLeaseNotActive)
	if n, err := f.s.CleanupExpiredLeases(f.ctx); err != nil || n != 0 {
		t.Fatalf("CleanupExpiredLeases after the lease ended = %d, %v; want 0", n, err)
	}
	f.wantCurrent(p.ID, 0)
	f.acquire(f.req("late"))
	f.wantCurrent(p.ID, 1)
}

func testRenewAfterExpiry(t *testing.T, f *fixture) {
	pool := f.pool("renew-late")
	p := f.addN(pool, 1, 1)[0]
	l := f.shortLease("renew-late")
	time.Sleep(shortWait)
	_, err := f.s.RenewLease(f.ctx, l.ID, time.Hour)
	wantErr(t, "RenewLease past ExpiresAt", err, pharox.ErrLeaseNotActive)
	got := f.getLease(l.ID)
	if got.Status != pharox.LeaseExpired {
		t.Fatalf("lease status after renewing past expiry = %s, want expired (reclaimed)", got.Status)
	}
	f.wantCurrent(p.ID, 0)
	_, err = f.s.ReleaseLease(f.ctx, l.ID, nil)
	wantErr(t, "ReleaseLease after a failed renew", err, pharox.ErrLeaseNotActive)
	f.wantCurrent(p.ID, 0)
	if n, err := f.s.CleanupExpiredLeases(f.ctx); err != nil || n != 0 {
		t.Fatalf("CleanupExpiredLeases after renew reclaimed the lease = %d, %v; want 0", n, err)
	}
}

func testCleanup(t *testing.T, f *fixture) {
	pool := f.pool("cleanup")
	other := f.pool("cleanup-other")
	shared := f.addN(pool, 1, 0)[0]
	exclusive := f.addN(other, 1, 1)[0]
	long := f.acquire(f.req("cleanup"))
	released := f.acquire(f.req("cleanup"))
	f.release(released.ID)
	start := time.Now()
	var short []*pharox.Lease
	for range 3 {
		short = append(short, f.shortLease("cleanup"))
	}
	short = append(short, f.shortLease("cleanup-other"))
	// If setting up took longer than the leases live, a store may already
	// have reclaimed some while acquiring the later ones.
	exact := beforeShortExpiry(start)
	time.Sleep(shortWait)

	n, err := f.s.CleanupExpiredLeases(f.ctx)
	if err != nil {
		t.Fatalf("CleanupExpiredLeases: %v", err)
	}
	switch {
	case exact && n != len(short):
		t.Fatalf("CleanupExpiredLeases = %d, want %d (the expired leases, not the long or released one)", n, len(short))
	case !exact && (n < 1 || n > len(short)):
		t.Fatalf("CleanupExpiredLeases = %d, want 1 to %d (setup was slow: some may have been reclaimed early)", n, len(short))
	}
	for _, l := range short {
		if got := f.getLease(l.ID); got.Status != pharox.LeaseExpired {
			t.Fatalf("lease %s after cleanup = %s, want expired", l.ID, got.Status)
		}
		_, err := f.s.ReleaseLease(f.ctx, l.ID, nil)
		wantErr(t, "ReleaseLease of a cleaned-up lease", err, pharox.ErrLeaseNotActive)
	}
	if got := f.getLease(long.ID); got.Status != pharox.LeaseActive {
		t.Fatalf("unexpired lease after cleanup = %s, want active", got.Status)
	}
	if got := f.getLease(released.ID); got.Status != pharox.LeaseReleased {
		t.Fatalf("released lease after cleanup = %s, want released", got.Status)
	}
	f.wantCurrent(shared.ID, 1)
	f.wantCurrent(exclusive.ID, 0)
	if st := f.stats("cleanup"); st.TotalLeases != 1 {
		t.Fatalf("stats TotalLeases after cleanup = %d, want 1", st.TotalLeases)
	}
	if n, err := f.s.CleanupExpiredLeases(f.ctx); err != nil || n != 0 {
		t.Fatalf("second CleanupExpiredLeases = %d, %v; want 0", n, err)
	}
	f.wantCurrent(shared.ID, 1)
	f.acquire(f.req("cleanup-other"))
}

func testFindIgnoresExpired(t *testing.T, f *fixture) {
	pool := f.pool("find-expired")
	p := f.addN(pool, 1, 1)[0]
	f.shortLease("find-expired")
	time.Sleep(shortWait)
	got, err := f.s.FindAvailableProxy(f.ctx, "find-expired", nil, pharox.FirstAvailable)
	if err != nil {
		t.Fatalf("FindAvailableProxy after the only lease expired: %v (AcquireLease would take the proxy now)", err)
	}
	if got.ID != p.ID {
		t.Fatalf("FindAvailableProxy = %s, want %s", got.ID, p.ID)
	}
}

func leaseStatus(l *pharox.Lease) string {
	if l == nil {
		return "<nil>"
	}
	return "lease " + string(l.Status)
}
