package storagetest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

var consumerTests = []subtest{
	{name: "EnsureIdempotent", fn: testEnsureConsumer},
	{name: "EnsureConcurrent", fn: testEnsureConsumerConcurrent},
	{name: "GetByID", fn: testGetConsumer},
	{name: "GetUnknown", fn: testGetConsumerUnknown},
	{name: "ListOrderedByName", fn: testListConsumers},
	{name: "Copies", fn: testConsumerCopies},
}

var leaseTests = []subtest{
	{name: "AcquireFields", fn: testAcquireFields},
	{name: "UnknownPoolOrConsumer", fn: testAcquireUnknown},
	{name: "EmptyPool", fn: testAcquireEmptyPool},
	{name: "ExclusiveProxy", fn: testAcquireExclusive},
	{name: "SharedProxy", fn: testAcquireShared},
	{name: "UnlimitedProxy", fn: testAcquireUnlimited},
	{name: "NeverLeasesInactiveOrBanned", fn: testAcquireSkipsUnleasable},
	{name: "SlowOnlyAfterActive", fn: testAcquireSlowLast},
	{name: "Release", fn: testRelease},
	{name: "ReleaseErrors", fn: testReleaseErrors},
	{name: "Renew", fn: testRenew},
	{name: "FindAvailableProxy", fn: testFindAvailable},
}

func testEnsureConsumer(t *testing.T, f *fixture) {
	a, err := f.s.EnsureConsumer(f.ctx, "crawler")
	if err != nil {
		t.Fatalf("EnsureConsumer: %v", err)
	}
	if a.ID == uuid.Nil || a.Name != "crawler" {
		t.Fatalf("EnsureConsumer = %+v, want a fresh id and name crawler", a)
	}
	b, err := f.s.EnsureConsumer(f.ctx, "crawler")
	if err != nil {
		t.Fatalf("EnsureConsumer again: %v", err)
	}
	if b.ID != a.ID || b.Name != a.Name {
		t.Fatalf("EnsureConsumer twice = %+v then %+v, want the same consumer", a, b)
	}
	c, err := f.s.EnsureConsumer(f.ctx, "indexer")
	if err != nil {
		t.Fatalf("EnsureConsumer(indexer): %v", err)
	}
	if c.ID == a.ID {
		t.Fatalf("two consumer names share id %s", a.ID)
	}
}

func testEnsureConsumerConcurrent(t *testing.T, f *fixture) {
	const n = 16
	ids := make([]uuid.UUID, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			c, err := f.s.EnsureConsumer(f.ctx, "racer")
			if err == nil {
				ids[i] = c.ID
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent EnsureConsumer #%d: %v", i, errs[i])
		}
		if ids[i] != ids[0] {
			t.Fatalf("concurrent EnsureConsumer returned ids %s and %s for one name", ids[0], ids[i])
		}
	}
	// Leases work with the consumer every caller got.
	pool := f.pool("racers")
	f.addN(pool, 1, 0)
	req := f.req("racers")
	req.ConsumerID, req.ConsumerName = ids[0], "racer"
	if l := f.acquire(req); l.ConsumerID != ids[0] {
		t.Fatalf("lease consumer = %s, want %s", l.ConsumerID, ids[0])
	}
}

func testAcquireFields(t *testing.T, f *fixture) {
	pool := f.pool("fields")
	in := richProxy(pool)
	in.Status = pharox.StatusActive
	p := f.add(in)[0]

	req := f.req("fields")
	req.Duration = 90 * time.Second
	before := time.Now()
	l := f.acquire(req)
	after := time.Now()

	if l.ID == uuid.Nil {
		t.Fatal("lease has no id")
	}
	if l.ProxyID != p.ID || l.PoolID != pool.ID || l.PoolName != "fields" {
		t.Fatalf("lease proxy/pool = %s/%s/%q, want %s/%s/fields", l.ProxyID, l.PoolID, l.PoolName, p.ID, pool.ID)
	}
	if l.ConsumerID != f.consumer.ID || l.ConsumerName != f.consumer.Name {
		t.Fatalf("lease consumer = %s/%q, want %s/%q", l.ConsumerID, l.ConsumerName, f.consumer.ID, f.consumer.Name)
	}
	if l.Status != pharox.LeaseActive || l.ReleasedAt != nil || l.SessionKey != "" {
		t.Fatalf("new lease status %s, released %v, session %q; want active, nil, empty", l.Status, l.ReleasedAt, l.SessionKey)
	}
	plausibleNow(t, "AcquiredAt", l.AcquiredAt, before, after)
	plausibleNow(t, "ExpiresAt - Duration", l.ExpiresAt.Add(-req.Duration), before, after)
	if d := l.ExpiresAt.Sub(l.AcquiredAt); d < req.Duration-time.Second || d > req.Duration+time.Second {
		t.Fatalf("ExpiresAt - AcquiredAt = %v, want about %v", d, req.Duration)
	}
	if l.Proxy == nil {
		t.Fatal("AcquireLease returned no Proxy snapshot")
	}
	sameProxyData(t, "lease Proxy snapshot", l.Proxy, in)
	if l.Proxy.ID != p.ID || l.Proxy.CurrentLeases != 1 {
		t.Fatalf("snapshot id %s current %d, want %s with the new lease counted (1)", l.Proxy.ID, l.Proxy.CurrentLeases, p.ID)
	}
	if l.Proxy.Credentials == nil || l.Proxy.Credentials.Password != in.Credentials.Password {
		t.Fatal("lease Proxy snapshot lacks the password the holder needs to use the proxy")
	}

	l2 := f.acquire(req)
	if l2.ID == l.ID {
		t.Fatalf("two leases share id %s", l.ID)
	}
	if l2.Proxy == nil || l2.Proxy.CurrentLeases != 2 {
		t.Fatalf("second lease snapshot CurrentLeases = %v, want 2", l2.Proxy)
	}
	f.wantCurrent(p.ID, 2)

	got := f.getLease(l.ID)
	if got.ID != l.ID || got.ProxyID != l.ProxyID || got.PoolID != l.PoolID || got.PoolName != l.PoolName ||
		got.ConsumerID != l.ConsumerID || got.ConsumerName != l.ConsumerName || got.Status != pharox.LeaseActive ||
		!got.AcquiredAt.Equal(l.AcquiredAt) || !got.ExpiresAt.Equal(l.ExpiresAt) || got.ReleasedAt != nil {
		t.Fatalf("GetLease = %+v, want what AcquireLease returned: %+v", got, l)
	}
	_, err := f.s.GetLease(f.ctx, uuid.New())
	wantErr(t, "GetLease(unknown)", err, pharox.ErrLeaseNotFound)
}

func testAcquireUnknown(t *testing.T, f *fixture) {
	pool := f.pool("known")
	p := f.addN(pool, 1, 1)[0]
	_, err := f.s.AcquireLease(f.ctx, f.req("unknown"))
	wantErr(t, "AcquireLease(unknown pool)", err, pharox.ErrPoolNotFound)
	req := f.req("known")
	req.ConsumerID = uuid.New()
	req.ConsumerName = "ghost"
	_, err = f.s.AcquireLease(f.ctx, req)
	wantErr(t, "AcquireLease(unknown consumer)", err, pharox.ErrConsumerNotFound)
	// Neither failure took the slot.
	f.wantCurrent(p.ID, 0)
	f.acquire(f.req("known"))
}

func testAcquireEmptyPool(t *testing.T, f *fixture) {
	f.pool("empty")
	f.noProxy(f.req("empty"), "empty pool")
	for _, st := range pharox.AllStrategies {
		req := f.req("empty")
		req.Strategy = st
		f.noProxy(req, "empty pool, "+string(st))
	}
	_, err := f.s.FindAvailableProxy(f.ctx, "empty", nil, pharox.FirstAvailable)
	wantErr(t, "FindAvailableProxy(empty pool)", err, pharox.ErrNoProxyAvailable)
}

func testAcquireExclusive(t *testing.T, f *fixture) {
	pool := f.pool("solo")
	p := f.addN(pool, 1, 1)[0]
	l := f.acquire(f.req("solo"))
	for _, st := range pharox.AllStrategies {
		req := f.req("solo")
		req.Strategy = st
		f.noProxy(req, "max_concurrency 1 already leased, "+string(st))
	}
	f.wantCurrent(p.ID, 1)
	f.release(l.ID)
	f.acquire(f.req("solo"))
}

func testAcquireShared(t *testing.T, f *fixture) {
	pool := f.pool("shared")
	p := f.addN(pool, 1, 3)[0]
	for i := 1; i <= 3; i++ {
		l := f.acquire(f.req("shared"))
		if l.Proxy == nil || l.Proxy.CurrentLeases != i {
			t.Fatalf("lease %d snapshot = %v, want CurrentLeases %d", i, l.Proxy, i)
		}
	}
	f.noProxy(f.req("shared"), "max_concurrency 3 with 3 leases")
	f.wantCurrent(p.ID, 3)
}

func testAcquireUnlimited(t *testing.T, f *fixture) {
	pool := f.pool("unlimited")
	p := f.addN(pool, 1, 0)[0]
	const n = 25
	for i := 1; i <= n; i++ {
		if l := f.acquire(f.req("unlimited")); l.ProxyID != p.ID {
			t.Fatalf("lease %d on %s, want %s", i, l.ProxyID, p.ID)
		}
	}
	f.wantCurrent(p.ID, n)
}

func testAcquireSkipsUnleasable(t *testing.T, f *fixture) {
	pool := f.pool("unleasable")
	in := []pharox.Proxy{f.proxy(pool), f.proxy(pool)}
	in[0].Status = pharox.StatusInactive
	in[1].Status = pharox.StatusBanned
	f.add(in...)
	for _, st := range pharox.AllStrategies {
		req := f.req("unleasable")
		req.Strategy = st
		f.noProxy(req, "only inactive and banned proxies, "+string(st))
		if p, err := f.s.FindAvailableProxy(f.ctx, "unleasable", nil, st); !errors.Is(err, pharox.ErrNoProxyAvailable) {
			t.Fatalf("FindAvailableProxy(%s) with only inactive and banned proxies = %v, %v", st, p, err)
		}
	}
	good := f.addN(pool, 1, 0)[0]
	for _, st := range pharox.AllStrategies {
		for range 5 {
			req := f.req("unleasable")
			req.Strategy = st
			if l := f.acquire(req); l.ProxyID != good.ID {
				t.Fatalf("%s leased proxy %s, want the only active proxy %s", st, l.ProxyID, good.ID)
			}
		}
	}
}

func testAcquireSlowLast(t *testing.T, f *fixture) {
	for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed} {
		name := "slow-" + string(st)
		pool := f.pool(name)
		// Many slow proxies and one active one, so an order that ignores
		// status would very likely start with a slow proxy.
		in := make([]pharox.Proxy, 6)
		for i := range in {
			in[i] = f.proxy(pool)
			in[i].MaxConcurrency = ptrutil.Ptr(1)
			in[i].Status = pharox.StatusSlow
		}
		in[3].Status = pharox.StatusActive
		out := f.add(in...)
		active := out[3].ID
		req := f.req(name)
		req.Strategy = st
		if l := f.acquire(req); l.ProxyID != active {
			t.Fatalf("%s: first lease on %s, want the active proxy %s", st, l.ProxyID, active)
		}
		for i := range 5 {
			l := f.acquire(req)
			if l.Proxy == nil || l.Proxy.Status != pharox.StatusSlow || l.ProxyID == active {
				t.Fatalf("%s: lease %d after the active proxy filled = %v, want a slow proxy", st, i+2, l.Proxy)
			}
		}
		f.noProxy(req, string(st)+": all full")
	}
}

func testRelease(t *testing.T, f *fixture) {
	pool := f.pool("release")
	p := f.addN(pool, 1, 1)[0]
	l := f.acquire(f.req("release"))
	before := time.Now()
	r := f.release(l.ID)
	after := time.Now()
	if r.ID != l.ID || r.Status != pharox.LeaseReleased || r.ReleasedAt == nil {
		t.Fatalf("ReleaseLease = id %s status %s released %v; want %s released with ReleasedAt", r.ID, r.Status, r.ReleasedAt, l.ID)
	}
	plausibleNow(t, "ReleasedAt", *r.ReleasedAt, before, after)
	if r.ReleasedAt.Before(l.AcquiredAt) {
		t.Fatalf("ReleasedAt %v before AcquiredAt %v", r.ReleasedAt, l.AcquiredAt)
	}
	if r.ProxyID != l.ProxyID || r.PoolName != l.PoolName || r.ConsumerID != l.ConsumerID || !r.AcquiredAt.Equal(l.AcquiredAt) {
		t.Fatalf("ReleaseLease returned %+v, want the same lease as acquired %+v", r, l)
	}
	got := f.getLease(l.ID)
	if got.Status != pharox.LeaseReleased || got.ReleasedAt == nil || !got.ReleasedAt.Equal(*r.ReleasedAt) {
		t.Fatalf("GetLease after release = status %s released %v, want released %v", got.Status, got.ReleasedAt, r.ReleasedAt)
	}
	f.wantCurrent(p.ID, 0)
	// The slot is free again.
	if l2 := f.acquire(f.req("release")); l2.ProxyID != p.ID {
		t.Fatalf("lease after release on %s, want %s", l2.ProxyID, p.ID)
	}
}

func testReleaseErrors(t *testing.T, f *fixture) {
	pool := f.pool("double")
	p := f.addN(pool, 1, 2)[0]
	l := f.acquire(f.req("double"))
	other := f.acquire(f.req("double"))
	first := f.release(l.ID)
	_, err := f.s.ReleaseLease(f.ctx, l.ID, nil)
	wantErr(t, "ReleaseLease twice", err, pharox.ErrLeaseNotActive)
	// The second release freed nothing: the other lease still counts.
	f.wantCurrent(p.ID, 1)
	got := f.getLease(l.ID)
	if got.Status != pharox.LeaseReleased || got.ReleasedAt == nil || !got.ReleasedAt.Equal(*first.ReleasedAt) {
		t.Fatalf("failed second release changed the lease: status %s released %v, want %v", got.Status, got.ReleasedAt, first.ReleasedAt)
	}
	if got := f.getLease(other.ID); got.Status != pharox.LeaseActive {
		t.Fatalf("other lease status = %s, want active", got.Status)
	}
	_, err = f.s.ReleaseLease(f.ctx, uuid.New(), nil)
	wantErr(t, "ReleaseLease(unknown)", err, pharox.ErrLeaseNotFound)
}

func testRenew(t *testing.T, f *fixture) {
	pool := f.pool("renew")
	p := f.addN(pool, 1, 1)[0]
	req := f.req("renew")
	req.Duration = time.Minute
	l := f.acquire(req)
	before := time.Now()
	r, err := f.s.RenewLease(f.ctx, l.ID, time.Hour)
	after := time.Now()
	if err != nil {
		t.Fatalf("RenewLease: %v", err)
	}
	if r.ID != l.ID || r.Status != pharox.LeaseActive || !r.AcquiredAt.Equal(l.AcquiredAt) {
		t.Fatalf("RenewLease = %+v, want the same active lease", r)
	}
	plausibleNow(t, "renewed ExpiresAt - 1h", r.ExpiresAt.Add(-time.Hour), before, after)
	if got := f.getLease(l.ID); !got.ExpiresAt.Equal(r.ExpiresAt) {
		t.Fatalf("GetLease ExpiresAt = %v, want renewed %v", got.ExpiresAt, r.ExpiresAt)
	}
	// Renewing to a shorter duration moves ExpiresAt back: it is now + d.
	r2, err := f.s.RenewLease(f.ctx, l.ID, 2*time.Minute)
	if err != nil {
		t.Fatalf("RenewLease(2m): %v", err)
	}
	if !r2.ExpiresAt.Before(r.ExpiresAt) {
		t.Fatalf("RenewLease(2m) ExpiresAt = %v, want before %v (now + 2m)", r2.ExpiresAt, r.ExpiresAt)
	}
	f.wantCurrent(p.ID, 1)

	f.release(l.ID)
	_, err = f.s.RenewLease(f.ctx, l.ID, time.Hour)
	wantErr(t, "RenewLease of a released lease", err, pharox.ErrLeaseNotActive)
	if got := f.getLease(l.ID); got.Status != pharox.LeaseReleased {
		t.Fatalf("failed renew changed the released lease's status to %s", got.Status)
	}
	f.wantCurrent(p.ID, 0)
	_, err = f.s.RenewLease(f.ctx, uuid.New(), time.Hour)
	wantErr(t, "RenewLease(unknown)", err, pharox.ErrLeaseNotFound)
}

func testFindAvailable(t *testing.T, f *fixture) {
	pool := f.pool("find")
	ps := f.addN(pool, 3, 1)
	nm := names{ps[0].ID: "p0", ps[1].ID: "p1", ps[2].ID: "p2"}
	for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed} {
		got, err := f.s.FindAvailableProxy(f.ctx, "find", nil, st)
		if err != nil {
			t.Fatalf("FindAvailableProxy(%s): %v", st, err)
		}
		if got.CurrentLeases != 0 {
			t.Fatalf("FindAvailableProxy returned CurrentLeases %d, want 0", got.CurrentLeases)
		}
		// It takes no slot: every proxy is still free.
		for _, p := range ps {
			f.wantCurrent(p.ID, 0)
		}
		// And it names what AcquireLease then takes.
		req := f.req("find")
		req.Strategy = st
		l := f.acquire(req)
		if l.ProxyID != got.ID {
			t.Fatalf("FindAvailableProxy(%s) = %s but AcquireLease took %s", st, nm.of(got.ID), nm.of(l.ProxyID))
		}
		f.release(l.ID)
	}
	// Find many times on the last free slot: it is still there.
	var held []*pharox.Lease
	for range 2 {
		held = append(held, f.acquire(f.req("find")))
	}
	for range 5 {
		if _, err := f.s.FindAvailableProxy(f.ctx, "find", nil, pharox.FirstAvailable); err != nil {
			t.Fatalf("FindAvailableProxy with one free slot: %v", err)
		}
	}
	held = append(held, f.acquire(f.req("find")))
	got, err := f.s.FindAvailableProxy(f.ctx, "find", nil, pharox.FirstAvailable)
	if !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("FindAvailableProxy with every slot taken = %v, %v; want ErrNoProxyAvailable", got, err)
	}
	f.releaseAll(held)
}
