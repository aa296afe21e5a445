package storagetest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var leaseIDTests = []subtest{
	{name: "NewLeaseGetsTheID", fn: testLeaseIDAssigned},
	{name: "RepeatTakesNoSlot", fn: testLeaseIDRepeat},
	{name: "RepeatAfterRelease", fn: testLeaseIDAfterRelease},
	{name: "RepeatAfterExpiry", fn: testLeaseIDAfterExpiry},
	{name: "OtherConsumerOrPool", fn: testLeaseIDConflict},
	{name: "ConcurrentRepeats", fn: testLeaseIDConcurrent},
	{name: "PurgedLikeOthers", fn: testLeaseIDPurged},
}

// leasesHeld sums CurrentLeases over ps as stored and checks the pool's
// statistics agree.
func (f *fixture) leasesHeld(pool string, ps []*pharox.Proxy) int {
	f.t.Helper()
	n := 0
	for _, p := range ps {
		n += f.getProxy(p.ID).CurrentLeases
	}
	if st := f.stats(pool); st.TotalLeases != n {
		f.t.Fatalf("pool %s: GetPoolStats TotalLeases = %d, proxies' CurrentLeases sum to %d", pool, st.TotalLeases, n)
	}
	return n
}

func testLeaseIDAssigned(t *testing.T, f *fixture) {
	pool := f.pool("lid-new")
	f.addN(pool, 1, 0)
	req := f.req("lid-new")
	req.LeaseID = uuid.New()
	l := f.acquire(req)
	if l.ID != req.LeaseID {
		t.Fatalf("AcquireLease with LeaseID %s returned lease %s", req.LeaseID, l.ID)
	}
	if got := f.getLease(req.LeaseID); got.ProxyID != l.ProxyID || got.Status != pharox.LeaseActive {
		t.Fatalf("GetLease(%s) = proxy %s, status %s; want proxy %s, active", req.LeaseID, got.ProxyID, got.Status, l.ProxyID)
	}
	// Without a LeaseID the store still makes up a fresh one.
	plain := f.req("lid-new")
	if l2 := f.acquire(plain); l2.ID == uuid.Nil || l2.ID == l.ID {
		t.Fatalf("AcquireLease without LeaseID returned id %s (first lease %s)", l2.ID, l.ID)
	}
}

// testLeaseIDRepeat: a retried acquisition (same id, pool and consumer)
// returns the lease it already made and takes no second slot. least_used
// on two unlimited proxies would put a second lease on the other one, so
// a double acquisition shows in either proxy's count.
func testLeaseIDRepeat(t *testing.T, f *fixture) {
	pool := f.pool("lid-repeat")
	ps := f.addN(pool, 2, 0)
	req := f.req("lid-repeat")
	req.Strategy = pharox.LeastUsed
	req.LeaseID = uuid.New()
	first := f.acquire(req)
	for i := range 3 {
		again := f.acquire(req)
		if again.ID != first.ID || again.ProxyID != first.ProxyID || again.Status != pharox.LeaseActive {
			t.Fatalf("repeat %d with LeaseID %s: lease %s on %s (%s), want the first lease %s on %s, active",
				i+1, req.LeaseID, again.ID, again.ProxyID, again.Status, first.ID, first.ProxyID)
		}
		if !again.ExpiresAt.Equal(first.ExpiresAt) || !again.AcquiredAt.Equal(first.AcquiredAt) {
			t.Fatalf("repeat %d changed the lease's times: acquired %v expires %v, first %v / %v",
				i+1, again.AcquiredAt, again.ExpiresAt, first.AcquiredAt, first.ExpiresAt)
		}
	}
	if n := f.leasesHeld("lid-repeat", ps); n != 1 {
		t.Fatalf("after 4 acquisitions with one LeaseID the pool holds %d leases, want 1", n)
	}
	if act := f.leases(pharox.LeaseQuery{Status: pharox.LeaseActive}); len(act) != 1 {
		t.Fatalf("ListLeases(active) = %d leases, want 1", len(act))
	}
	// Releasing it frees the one slot.
	f.release(first.ID)
	if n := f.leasesHeld("lid-repeat", ps); n != 0 {
		t.Fatalf("after releasing the lease the pool holds %d leases, want 0", n)
	}
}

// testLeaseIDAfterRelease: a retry that arrives after the lease ended
// returns the ended lease; it must not lease again.
func testLeaseIDAfterRelease(t *testing.T, f *fixture) {
	pool := f.pool("lid-released")
	ps := f.addN(pool, 2, 1)
	req := f.req("lid-released")
	req.LeaseID = uuid.New()
	first := f.acquire(req)
	f.release(first.ID)
	again, err := f.s.AcquireLease(f.ctx, req)
	if err != nil {
		t.Fatalf("AcquireLease with the LeaseID of a released lease: %v; want that lease", err)
	}
	if again.ID != first.ID || again.ProxyID != first.ProxyID || again.Status != pharox.LeaseReleased || again.ReleasedAt == nil {
		t.Fatalf("AcquireLease with the LeaseID of a released lease = %s on %s (%s, released at %v); want %s on %s, released",
			again.ID, again.ProxyID, again.Status, again.ReleasedAt, first.ID, first.ProxyID)
	}
	if n := f.leasesHeld("lid-released", ps); n != 0 {
		t.Fatalf("a retry after release took a slot: the pool holds %d leases", n)
	}
	if _, err := f.s.ReleaseLease(f.ctx, first.ID, nil); err == nil {
		t.Fatalf("ReleaseLease of the ended lease after the retry succeeded: the retry made it active again")
	}
}

// testLeaseIDAfterExpiry: the same for a lease that expired.
func testLeaseIDAfterExpiry(t *testing.T, f *fixture) {
	pool := f.pool("lid-expired")
	ps := f.addN(pool, 2, 1)
	req := f.req("lid-expired")
	req.Duration = shortTTL
	req.LeaseID = uuid.New()
	first := f.acquire(req)
	time.Sleep(shortWait)
	again, err := f.s.AcquireLease(f.ctx, req)
	if err != nil {
		t.Fatalf("AcquireLease with the LeaseID of an expired lease: %v; want that lease", err)
	}
	if again.ID != first.ID || again.ProxyID != first.ProxyID || !again.ExpiresAt.Equal(first.ExpiresAt) {
		t.Fatalf("AcquireLease with the LeaseID of an expired lease = %s on %s expiring %v; want %s on %s expiring %v",
			again.ID, again.ProxyID, again.ExpiresAt, first.ID, first.ProxyID, first.ExpiresAt)
	}
	if _, err := f.s.CleanupExpiredLeases(f.ctx); err != nil {
		t.Fatalf("CleanupExpiredLeases: %v", err)
	}
	if n := f.leasesHeld("lid-expired", ps); n != 0 {
		t.Fatalf("a retry after expiry took a slot: the pool holds %d leases after cleanup", n)
	}
	if got := f.getLease(first.ID); got.Status != pharox.LeaseExpired {
		t.Fatalf("lease %s is %s after expiry, a retry and cleanup; want expired", first.ID, got.Status)
	}
}

// testLeaseIDConflict: an id already used by another consumer or in
// another pool is not a retry of this request.
func testLeaseIDConflict(t *testing.T, f *fixture) {
	pool := f.pool("lid-a")
	ps := f.addN(pool, 2, 0)
	otherPool := f.pool("lid-b")
	ops := f.addN(otherPool, 1, 0)
	req := f.req("lid-a")
	req.LeaseID = uuid.New()
	first := f.acquire(req)

	other := f.ensure("lid-other-consumer")
	byOther := req
	byOther.ConsumerID, byOther.ConsumerName = other.ID, other.Name
	_, err := f.s.AcquireLease(f.ctx, byOther)
	wantErr(t, "AcquireLease with another consumer's LeaseID", err, pharox.ErrAlreadyExists)

	inOther := req
	inOther.PoolName = "lid-b"
	_, err = f.s.AcquireLease(f.ctx, inOther)
	wantErr(t, "AcquireLease in another pool with a LeaseID in use", err, pharox.ErrAlreadyExists)

	if n := f.leasesHeld("lid-a", ps); n != 1 {
		t.Fatalf("pool lid-a holds %d leases after the refused reuses, want 1", n)
	}
	if n := f.leasesHeld("lid-b", ops); n != 0 {
		t.Fatalf("pool lid-b holds %d leases after a refused reuse, want 0", n)
	}
	if got := f.getLease(first.ID); got.ConsumerID != f.consumer.ID || got.ProxyID != first.ProxyID || got.Status != pharox.LeaseActive {
		t.Fatalf("the refused reuses changed lease %s: consumer %s, proxy %s, %s", first.ID, got.ConsumerID, got.ProxyID, got.Status)
	}
	// Still refused once the lease ended.
	f.release(first.ID)
	_, err = f.s.AcquireLease(f.ctx, byOther)
	wantErr(t, "AcquireLease with another consumer's LeaseID after its release", err, pharox.ErrAlreadyExists)
}

// testLeaseIDConcurrent: retries racing each other (a client that retried
// while the first attempt was still running) still take one slot.
func testLeaseIDConcurrent(t *testing.T, f *fixture) {
	const callers = 8
	pool := f.pool("lid-race")
	ps := f.addN(pool, 4, 0)
	for round := range 3 {
		req := f.req("lid-race")
		req.Strategy = pharox.LeastUsed
		req.LeaseID = uuid.New()
		start := make(chan struct{})
		got := make([]*pharox.Lease, callers)
		errs := make([]error, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				<-start
				got[i], errs[i] = f.s.AcquireLease(f.ctx, req)
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: concurrent acquisition %d with one LeaseID: %v", round, i, err)
			}
			if got[i].ID != req.LeaseID {
				t.Fatalf("round %d: concurrent acquisition %d with LeaseID %s returned lease %s", round, i, req.LeaseID, got[i].ID)
			}
			if got[i].ProxyID != got[0].ProxyID {
				t.Fatalf("round %d: concurrent acquisitions with LeaseID %s returned it on proxies %s and %s",
					round, req.LeaseID, got[0].ProxyID, got[i].ProxyID)
			}
		}
		if n := f.leasesHeld("lid-race", ps); n != round+1 {
			t.Fatalf("round %d: %d concurrent acquisitions with one LeaseID left the pool with %d leases, want %d (one per round)",
				round, callers, n, round+1)
		}
	}
}

// testLeaseIDPurged: an ended lease with a caller-chosen id is purged like
// any other, wherever its id sorts (store-made ids may sort by time).
func testLeaseIDPurged(t *testing.T, f *fixture) {
	pool := f.pool("lid-purge")
	f.addN(pool, 1, 0)
	var ids []uuid.UUID
	for _, first := range []byte{0x00, 0x7f, 0xff} {
		req := f.req("lid-purge")
		req.LeaseID = uuid.New()
		req.LeaseID[0] = first
		f.release(f.acquire(req).ID)
		ids = append(ids, req.LeaseID)
	}
	n, err := f.s.PurgeEndedLeases(f.ctx, time.Now().Add(clockSlack))
	if err != nil {
		t.Fatalf("PurgeEndedLeases: %v", err)
	}
	if n != len(ids) {
		t.Errorf("PurgeEndedLeases = %d, want %d", n, len(ids))
	}
	for _, id := range ids {
		if _, err := f.s.GetLease(f.ctx, id); !errors.Is(err, pharox.ErrLeaseNotFound) {
			t.Fatalf("GetLease(%s) after purging every ended lease: %v, want ErrLeaseNotFound", id, err)
		}
	}
}
