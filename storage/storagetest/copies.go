package storagetest

import (
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

var copyTests = []subtest{
	{name: "PoolsAndConsumers", fn: testCopiesPools},
	{name: "ProxyInputs", fn: testCopiesProxyInputs},
	{name: "ProxyResults", fn: testCopiesProxyResults},
	{name: "Leases", fn: testCopiesLeases},
}

// scribble mutates every field of p, including the targets of its pointers
// and the backing array of its tags.
func scribble(p *pharox.Proxy) {
	if p == nil {
		return
	}
	p.Host, p.Port, p.Protocol = "mutated.invalid", 1, pharox.ProtocolSOCKS4
	p.Country, p.City, p.Source, p.ISP = "XX", "Nowhere", "mutant", "mutant"
	p.Status = pharox.StatusBanned
	p.CurrentLeases = 77
	p.FailureStreak = 77
	p.LastError = "mutated"
	if p.Credentials != nil {
		p.Credentials.User, p.Credentials.Password = "mallory", "mutated"
	}
	for _, v := range []*int{p.ASN, p.MaxConcurrency} {
		if v != nil {
			*v = 9999
		}
	}
	for _, v := range []*float64{p.Latitude, p.Longitude} {
		if v != nil {
			*v = 1.5
		}
	}
	for _, v := range []*time.Time{p.CheckedAt, p.StatusChangedAt} {
		if v != nil {
			*v = time.Unix(0, 0)
		}
	}
	for i := range p.Tags {
		p.Tags[i] = "mutated"
	}
	if len(p.Tags) > 0 {
		// Appending within capacity would also reach a shared array.
		p.Tags = append(p.Tags[:0], "mutated-too")
	}
}

func testCopiesPools(t *testing.T, f *fixture) {
	p := f.pool("copy")
	p.Name, p.Description = "mutated", "mutated"
	got, err := f.s.GetPool(f.ctx, p.ID)
	if err != nil || got.Name != "copy" {
		t.Fatalf("GetPool after mutating CreatePool's result = %+v, %v", got, err)
	}
	got.Name = "mutated"
	pools, err := f.s.ListPools(f.ctx)
	if err != nil || len(pools) != 1 || pools[0].Name != "copy" {
		t.Fatalf("ListPools after mutating GetPool's result = %v, %v", pools, err)
	}
	pools[0].Name = "mutated"
	if got, err := f.s.GetPoolByName(f.ctx, "copy"); err != nil || got.Name != "copy" {
		t.Fatalf("GetPoolByName after mutating ListPools' result = %+v, %v", got, err)
	}

	c, err := f.s.EnsureConsumer(f.ctx, "copy-consumer")
	if err != nil {
		t.Fatalf("EnsureConsumer: %v", err)
	}
	id := c.ID
	c.Name = "mutated"
	c2, err := f.s.EnsureConsumer(f.ctx, "copy-consumer")
	if err != nil || c2.ID != id || c2.Name != "copy-consumer" {
		t.Fatalf("EnsureConsumer after mutating its result = %+v, %v", c2, err)
	}
}

func testCopiesProxyInputs(t *testing.T, f *fixture) {
	pool := f.pool("copy-in")
	in := richProxy(pool)
	in.Status = pharox.StatusActive
	in.MaxConcurrency = ptrutil.Ptr(1)
	want := *in.Clone()
	batch := []pharox.Proxy{in}
	out := f.add(batch...)
	scribble(&batch[0])
	scribble(&in)
	got := f.getProxy(out[0].ID)
	sameProxyData(t, "GetProxy after mutating AddProxies' input", got, want)

	// The stored max_concurrency still holds: one lease, then none.
	f.acquire(f.req("copy-in"))
	f.noProxy(f.req("copy-in"), "max_concurrency 1 after the input's limit was mutated to 9999")
}

func testCopiesProxyResults(t *testing.T, f *fixture) {
	pool := f.pool("copy-out")
	in := richProxy(pool)
	in.Status = pharox.StatusActive
	in.MaxConcurrency = ptrutil.Ptr(1)
	want := *in.Clone()
	out := f.add(in)[0]
	id := out.ID
	scribble(out)
	sameProxyData(t, "GetProxy after mutating AddProxies' result", f.getProxy(id), want)

	got := f.getProxy(id)
	scribble(got)
	sameProxyData(t, "GetProxy after mutating GetProxy's result", f.getProxy(id), want)

	list, err := f.s.ListProxies(f.ctx, pool.ID)
	if err != nil || len(list) != 1 {
		t.Fatalf("ListProxies = %v, %v", list, err)
	}
	scribble(list[0])
	sameProxyData(t, "GetProxy after mutating ListProxies' result", f.getProxy(id), want)

	found, err := f.s.FindAvailableProxy(f.ctx, "copy-out", nil, pharox.FirstAvailable)
	if err != nil {
		t.Fatalf("FindAvailableProxy: %v", err)
	}
	scribble(found)
	sameProxyData(t, "GetProxy after mutating FindAvailableProxy's result", f.getProxy(id), want)

	hc, err := f.s.ApplyHealthCheckResult(f.ctx, pharox.HealthCheckResult{ProxyID: id, Status: pharox.StatusActive,
		CheckedAt: time.Now().UTC().Truncate(time.Millisecond), Latency: time.Millisecond})
	if err != nil || hc == nil {
		t.Fatalf("ApplyHealthCheckResult = %v, %v", hc, err)
	}
	checked := *hc.CheckedAt
	scribble(hc)
	after := f.getProxy(id)
	sameProxyData(t, "GetProxy after mutating ApplyHealthCheckResult's result", after, want)
	if after.CheckedAt == nil || !after.CheckedAt.Equal(checked) || after.FailureStreak != 0 {
		t.Fatalf("health fields changed by mutating a returned proxy: checked %v streak %d", after.CheckedAt, after.FailureStreak)
	}

	st := f.setStatus(id, pharox.StatusSlow)
	changed := *st.StatusChangedAt
	scribble(st)
	after = f.getProxy(id)
	if after.Status != pharox.StatusSlow || after.StatusChangedAt == nil || !after.StatusChangedAt.Equal(changed) {
		t.Fatalf("GetProxy after mutating SetProxyStatus' result: status %s changed %v, want slow %v", after.Status, after.StatusChangedAt, changed)
	}
	want.Status = pharox.StatusSlow
	sameProxyData(t, "GetProxy after mutating SetProxyStatus' result", after, want)
	f.acquire(f.req("copy-out"))
	f.noProxy(f.req("copy-out"), "max_concurrency 1 after returned limits were mutated to 9999")
}

func testCopiesLeases(t *testing.T, f *fixture) {
	pool := f.pool("copy-lease")
	in := richProxy(pool)
	in.Status = pharox.StatusActive
	in.MaxConcurrency = ptrutil.Ptr(1)
	want := *in.Clone()
	p := f.add(in)[0]

	l := f.acquire(f.req("copy-lease"))
	id, acquired, expires := l.ID, l.AcquiredAt, l.ExpiresAt
	scribble(l.Proxy)
	l.Status = pharox.LeaseReleased
	l.ExpiresAt = time.Unix(0, 0)
	l.PoolName = "mutated"
	check := func(step string, wantStatus pharox.LeaseStatus) *pharox.Lease {
		t.Helper()
		got := f.getLease(id)
		if got.Status != wantStatus || !got.AcquiredAt.Equal(acquired) || !got.ExpiresAt.Equal(expires) || got.PoolName != "copy-lease" {
			t.Fatalf("GetLease after mutating %s = status %s acquired %v expires %v pool %q; want %s %v %v copy-lease",
				step, got.Status, got.AcquiredAt, got.ExpiresAt, got.PoolName, wantStatus, acquired, expires)
		}
		if got.Proxy != nil {
			sameProxyData(t, "GetLease Proxy after mutating "+step, got.Proxy, want)
		}
		return got
	}
	check("AcquireLease's result", pharox.LeaseActive)
	sameProxyData(t, "GetProxy after mutating a lease's Proxy", f.getProxy(p.ID), want)
	f.noProxy(f.req("copy-lease"), "exclusive proxy leased, snapshot's limit mutated")

	got := check("nothing", pharox.LeaseActive)
	got.Status = pharox.LeaseExpired
	scribble(got.Proxy)
	check("GetLease's result", pharox.LeaseActive)

	ls := f.leases(pharox.LeaseQuery{})
	if len(ls) != 1 {
		t.Fatalf("ListLeases = %d leases, want 1", len(ls))
	}
	ls[0].Status = pharox.LeaseExpired
	ls[0].ExpiresAt = time.Unix(0, 0)
	scribble(ls[0].Proxy)
	check("ListLeases' result", pharox.LeaseActive)

	r, err := f.s.RenewLease(f.ctx, id, time.Hour)
	if err != nil {
		t.Fatalf("RenewLease: %v", err)
	}
	expires = r.ExpiresAt
	r.ExpiresAt = time.Unix(0, 0)
	scribble(r.Proxy)
	check("RenewLease's result", pharox.LeaseActive)

	rel := f.release(id)
	releasedAt := *rel.ReleasedAt
	*rel.ReleasedAt = time.Unix(0, 0)
	rel.Status = pharox.LeaseActive
	scribble(rel.Proxy)
	after := check("ReleaseLease's result", pharox.LeaseReleased)
	if after.ReleasedAt == nil || !after.ReleasedAt.Equal(releasedAt) {
		t.Fatalf("ReleasedAt after mutating ReleaseLease's result = %v, want %v", after.ReleasedAt, releasedAt)
	}
	f.wantCurrent(p.ID, 0)
	_, err = f.s.ReleaseLease(f.ctx, id, nil)
	wantErr(t, "ReleaseLease after mutating the released copy back to active", err, pharox.ErrLeaseNotActive)
}
