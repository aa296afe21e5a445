package storagetest

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

var proxyTests = []subtest{
	{name: "AddAssignsIDs", fn: testAddProxiesIDs},
	{name: "AddRoundTrip", fn: testAddProxiesRoundTrip},
	{name: "AddIgnoresCountersAndHealth", fn: testAddProxiesIgnoresState},
	{name: "AddValidation", fn: testAddProxiesValidation},
	{name: "AddAllOrNothing", fn: testAddProxiesAllOrNothing},
	{name: "AddDuplicateKey", fn: testAddProxiesDuplicateKey},
	{name: "GetAndList", fn: testGetListProxies},
	{name: "SetStatus", fn: testSetProxyStatus},
	{name: "SetStatusKeepsLeases", fn: testSetProxyStatusKeepsLeases},
	{name: "Delete", fn: testDeleteProxy},
}

func testAddProxiesIDs(t *testing.T, f *fixture) {
	pool := f.pool("ids")
	explicit := uuid.New()
	in := []pharox.Proxy{f.proxy(pool), f.proxy(pool), f.proxy(pool)}
	in[1].ID = explicit
	out := f.add(in...)
	seen := map[uuid.UUID]bool{}
	for i, p := range out {
		if p.ID == uuid.Nil {
			t.Fatalf("proxy %d got no id", i)
		}
		if seen[p.ID] {
			t.Fatalf("proxy %d got duplicate id %s", i, p.ID)
		}
		seen[p.ID] = true
		if p.Host != in[i].Host || p.Port != in[i].Port {
			t.Fatalf("AddProxies result %d is %s, want input order (%s)", i, p.Address(), in[i].Address())
		}
	}
	if out[1].ID != explicit {
		t.Fatalf("AddProxies replaced the caller's id %s with %s", explicit, out[1].ID)
	}
	if out, err := f.s.AddProxies(f.ctx, nil); err != nil || len(out) != 0 {
		t.Fatalf("AddProxies(nil) = %v, %v; want no proxies, no error", out, err)
	}
}

// richProxy sets every optional field.
func richProxy(pool *pharox.Pool) pharox.Proxy {
	return pharox.Proxy{
		PoolID:         pool.ID,
		Host:           "proxy.example.com",
		Port:           3128,
		Protocol:       pharox.ProtocolSOCKS5,
		Credentials:    &pharox.Credentials{User: "alice", Password: "s3cr:et@"},
		Source:         "vendor-a",
		Country:        "AR",
		City:           "Buenos Aires",
		ISP:            "Telecom",
		ASN:            ptrutil.Ptr(7303),
		Latitude:       ptrutil.Ptr(-34.6037),
		Longitude:      ptrutil.Ptr(-58.3816),
		Tags:           []string{"residential", "fast"},
		Status:         pharox.StatusSlow,
		MaxConcurrency: ptrutil.Ptr(3),
	}
}

// sameProxyData compares the caller-owned fields of a proxy.
func sameProxyData(t testing.TB, what string, got *pharox.Proxy, want pharox.Proxy) {
	t.Helper()
	eqPtr := func(a, b *int) bool { return a == nil && b == nil || a != nil && b != nil && *a == *b }
	eqFloat := func(a, b *float64) bool { return a == nil && b == nil || a != nil && b != nil && *a == *b }
	eqCred := func(a, b *pharox.Credentials) bool {
		norm := func(c *pharox.Credentials) pharox.Credentials {
			if c == nil {
				return pharox.Credentials{}
			}
			return *c
		}
		return norm(a) == norm(b)
	}
	switch {
	case got == nil:
		t.Fatalf("%s: proxy is nil", what)
	case got.PoolID != want.PoolID || got.Host != want.Host || got.Port != want.Port || got.Protocol != want.Protocol:
		t.Fatalf("%s: got %s in pool %s, want %s in pool %s", what, got, got.PoolID, &want, want.PoolID)
	case !eqCred(got.Credentials, want.Credentials):
		t.Fatalf("%s: credentials %v (password match %v), want %v", what, got.Credentials,
			got.Credentials != nil && want.Credentials != nil && got.Credentials.Password == want.Credentials.Password, want.Credentials)
	case got.Source != want.Source || got.Country != want.Country || got.City != want.City || got.ISP != want.ISP:
		t.Fatalf("%s: source/country/city/isp = %q/%q/%q/%q, want %q/%q/%q/%q", what,
			got.Source, got.Country, got.City, got.ISP, want.Source, want.Country, want.City, want.ISP)
	case !eqPtr(got.ASN, want.ASN):
		t.Fatalf("%s: asn = %v, want %v", what, deref(got.ASN), deref(want.ASN))
	case !eqFloat(got.Latitude, want.Latitude) || !eqFloat(got.Longitude, want.Longitude):
		t.Fatalf("%s: coordinates = %v,%v, want %v,%v", what, deref(got.Latitude), deref(got.Longitude), deref(want.Latitude), deref(want.Longitude))
	case !sameTags(got.Tags, want.Tags):
		t.Fatalf("%s: tags = %q, want %q", what, got.Tags, want.Tags)
	case !eqPtr(got.MaxConcurrency, want.MaxConcurrency):
		t.Fatalf("%s: max_concurrency = %v, want %v", what, deref(got.MaxConcurrency), deref(want.MaxConcurrency))
	}
	wantStatus := want.Status
	if wantStatus == "" {
		wantStatus = pharox.StatusActive
	}
	if got.Status != wantStatus {
		t.Fatalf("%s: status = %q, want %q", what, got.Status, wantStatus)
	}
}

// sameTags treats nil and empty alike: stores need not tell them apart.
func sameTags(a, b []string) bool { return len(a) == 0 && len(b) == 0 || slices.Equal(a, b) }

func deref[T any](p *T) any {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func testAddProxiesRoundTrip(t *testing.T, f *fixture) {
	pool := f.pool("rich")
	in := []pharox.Proxy{richProxy(pool), f.proxy(pool), f.proxy(pool)}
	in[1].Status = "" // empty means active
	in[1].Host = "2001:db8::1"
	in[2].Status = pharox.StatusBanned
	in[2].ASN = ptrutil.Ptr(0) // ASN 0 is a real value, not "unknown"
	before := time.Now()
	out := f.add(in...)
	for i := range in {
		sameProxyData(t, "AddProxies result", out[i], in[i])
		sameProxyData(t, "GetProxy", f.getProxy(out[i].ID), in[i])
		if !out[i].CreatedAt.IsZero() {
			plausibleNow(t, "Proxy.CreatedAt", out[i].CreatedAt, before, time.Now())
		}
	}
}

func testAddProxiesIgnoresState(t *testing.T, f *fixture) {
	pool := f.pool("state")
	in := f.proxy(pool)
	in.MaxConcurrency = ptrutil.Ptr(1)
	in.CurrentLeases = 1
	checked := time.Now().Add(-time.Hour).UTC()
	in.CheckedAt = &checked
	in.StatusChangedAt = &checked
	in.FailureStreak = 4
	in.LatencyMS = 120
	in.LastError = "boom"
	in.LastStatusCode = 502
	out := f.add(in)[0]
	got := f.getProxy(out.ID)
	for what, p := range map[string]*pharox.Proxy{"AddProxies result": out, "GetProxy": got} {
		if p.CurrentLeases != 0 || p.CheckedAt != nil || p.StatusChangedAt != nil || p.FailureStreak != 0 ||
			p.LatencyMS != 0 || p.LastError != "" || p.LastStatusCode != 0 {
			t.Fatalf("%s kept input counters/health: current=%d checked=%v changed=%v streak=%d latency=%d err=%q code=%d",
				what, p.CurrentLeases, p.CheckedAt, p.StatusChangedAt, p.FailureStreak, p.LatencyMS, p.LastError, p.LastStatusCode)
		}
	}
	// The input's CurrentLeases of 1 must not fill the max=1 proxy.
	l := f.acquire(f.req("state"))
	if l.ProxyID != out.ID {
		t.Fatalf("lease on %s, want %s", l.ProxyID, out.ID)
	}
}

func testAddProxiesValidation(t *testing.T, f *fixture) {
	pool := f.pool("valid")
	cases := []struct {
		name string
		mod  func(p *pharox.Proxy)
	}{
		{"empty host", func(p *pharox.Proxy) { p.Host = "" }},
		{"bad host", func(p *pharox.Proxy) { p.Host = "bad host!" }},
		{"port zero", func(p *pharox.Proxy) { p.Port = 0 }},
		{"port too big", func(p *pharox.Proxy) { p.Port = 70000 }},
		{"unknown protocol", func(p *pharox.Proxy) { p.Protocol = "ftp" }},
		{"unknown status", func(p *pharox.Proxy) { p.Status = "sleepy" }},
		{"max_concurrency zero", func(p *pharox.Proxy) { p.MaxConcurrency = ptrutil.Ptr(0) }},
		{"latitude without longitude", func(p *pharox.Proxy) { p.Latitude = ptrutil.Ptr(10.0) }},
		{"latitude out of range", func(p *pharox.Proxy) { p.Latitude, p.Longitude = ptrutil.Ptr(91.0), ptrutil.Ptr(0.0) }},
		{"negative asn", func(p *pharox.Proxy) { p.ASN = ptrutil.Ptr(-1) }},
		{"line break in user", func(p *pharox.Proxy) { p.Credentials = &pharox.Credentials{User: "a\nb"} }},
	}
	for _, c := range cases {
		p := f.proxy(pool)
		c.mod(&p)
		_, err := f.s.AddProxies(f.ctx, []pharox.Proxy{p})
		wantErr(t, "AddProxies with "+c.name, err, pharox.ErrInvalidArgument)
	}
	if ps, err := f.s.ListProxies(f.ctx, pool.ID); err != nil || len(ps) != 0 {
		t.Fatalf("ListProxies after only invalid AddProxies = %d proxies, %v; want none", len(ps), err)
	}
}

func testAddProxiesAllOrNothing(t *testing.T, f *fixture) {
	pool := f.pool("atomic")
	existing := f.add(f.proxy(pool))[0]
	list := func() []*pharox.Proxy {
		ps, err := f.s.ListProxies(f.ctx, pool.ID)
		if err != nil {
			t.Fatalf("ListProxies: %v", err)
		}
		return ps
	}

	bad := f.proxy(pool)
	bad.Port = -1
	_, err := f.s.AddProxies(f.ctx, []pharox.Proxy{f.proxy(pool), f.proxy(pool), bad})
	wantErr(t, "AddProxies with one invalid proxy last", err, pharox.ErrInvalidArgument)
	if n := len(list()); n != 1 {
		t.Fatalf("after a batch with one invalid proxy the pool has %d proxies, want 1 (nothing stored)", n)
	}

	dup := pharox.Proxy{PoolID: pool.ID, Host: existing.Host, Port: existing.Port, Protocol: existing.Protocol}
	_, err = f.s.AddProxies(f.ctx, []pharox.Proxy{f.proxy(pool), dup})
	wantErr(t, "AddProxies duplicating a stored proxy", err, pharox.ErrAlreadyExists)
	if n := len(list()); n != 1 {
		t.Fatalf("after a batch with a duplicate the pool has %d proxies, want 1", n)
	}

	twin := f.proxy(pool)
	_, err = f.s.AddProxies(f.ctx, []pharox.Proxy{twin, f.proxy(pool), twin})
	wantErr(t, "AddProxies with the same proxy twice in one batch", err, pharox.ErrAlreadyExists)
	if n := len(list()); n != 1 {
		t.Fatalf("after a batch duplicating itself the pool has %d proxies, want 1", n)
	}

	stray := f.proxy(pool)
	stray.PoolID = uuid.New()
	_, err = f.s.AddProxies(f.ctx, []pharox.Proxy{f.proxy(pool), stray})
	wantErr(t, "AddProxies naming an unknown pool", err, pharox.ErrPoolNotFound)
	if n := len(list()); n != 1 {
		t.Fatalf("after a batch with an unknown pool the pool has %d proxies, want 1", n)
	}

	// The proxies of the failed batches can still be added afterwards.
	f.add(twin)
	if n := len(list()); n != 2 {
		t.Fatalf("pool has %d proxies, want 2", n)
	}
}

func testAddProxiesDuplicateKey(t *testing.T, f *fixture) {
	pool := f.pool("keys")
	other := f.pool("keys-other")
	base := f.proxy(pool)
	base.Credentials = &pharox.Credentials{User: "u1", Password: "p"}
	f.add(base)

	// Same pool, protocol, host, port and user: a duplicate, whatever the
	// password or other fields.
	same := base
	same.Credentials = &pharox.Credentials{User: "u1", Password: "different"}
	same.Country = "DE"
	_, err := f.s.AddProxies(f.ctx, []pharox.Proxy{same})
	wantErr(t, "AddProxies same pool/protocol/host/port/user", err, pharox.ErrAlreadyExists)

	// Any one of them different: not a duplicate.
	otherUser := base
	otherUser.Credentials = &pharox.Credentials{User: "u2"}
	noUser := base
	noUser.Credentials = nil
	otherProto := base
	otherProto.Protocol = pharox.ProtocolSOCKS5
	otherPort := base
	otherPort.Port++
	otherPool := base
	otherPool.PoolID = other.ID
	f.add(otherUser, noUser, otherProto, otherPort, otherPool)
	if ps, err := f.s.ListProxies(f.ctx, pool.ID); err != nil || len(ps) != 5 {
		t.Fatalf("ListProxies = %d proxies, %v; want 5", len(ps), err)
	}
}

func testGetListProxies(t *testing.T, f *fixture) {
	pool := f.pool("list")
	empty := f.pool("empty")
	if ps, err := f.s.ListProxies(f.ctx, empty.ID); err != nil || len(ps) != 0 {
		t.Fatalf("ListProxies(empty pool) = %v, %v; want none", ps, err)
	}
	added := f.addN(pool, 6, 0)
	f.addN(empty, 1, 0) // proxies of another pool are not listed
	ps, err := f.s.ListProxies(f.ctx, pool.ID)
	if err != nil {
		t.Fatalf("ListProxies: %v", err)
	}
	var got []uuid.UUID
	for _, p := range ps {
		got = append(got, p.ID)
		if p.PoolID != pool.ID {
			t.Fatalf("ListProxies returned proxy %s of pool %s", p.ID, p.PoolID)
		}
	}
	if want := sortedIDs(added); !slices.Equal(got, want) {
		t.Fatalf("ListProxies ids = %v, want %v (ordered by id)", got, want)
	}
	_, err = f.s.GetProxy(f.ctx, uuid.New())
	wantErr(t, "GetProxy(unknown)", err, pharox.ErrProxyNotFound)
}

func testSetProxyStatus(t *testing.T, f *fixture) {
	pool := f.pool("status")
	p := f.addN(pool, 1, 0)[0]
	// Build a failure streak below the threshold.
	for i := range 2 {
		r := pharox.HealthCheckResult{ProxyID: p.ID, Status: pharox.StatusInactive, FailureThreshold: 5,
			CheckedAt: time.Now().UTC().Truncate(time.Millisecond), Error: "refused"}
		got, err := f.s.ApplyHealthCheckResult(f.ctx, r)
		if err != nil || got == nil || got.FailureStreak != i+1 {
			t.Fatalf("ApplyHealthCheckResult #%d = %+v, %v; want streak %d", i+1, got, err, i+1)
		}
	}

	before := time.Now()
	got := f.setStatus(p.ID, pharox.StatusInactive)
	after := time.Now()
	if got.Status != pharox.StatusInactive || got.FailureStreak != 0 || got.StatusChangedAt == nil {
		t.Fatalf("SetProxyStatus(inactive) = status %s, streak %d, changed %v; want inactive, 0, stamped",
			got.Status, got.FailureStreak, got.StatusChangedAt)
	}
	plausibleNow(t, "StatusChangedAt", *got.StatusChangedAt, before, after)
	changed := *got.StatusChangedAt
	stored := f.getProxy(p.ID)
	if stored.Status != pharox.StatusInactive || stored.FailureStreak != 0 || stored.StatusChangedAt == nil || !stored.StatusChangedAt.Equal(changed) {
		t.Fatalf("GetProxy after SetProxyStatus = status %s, streak %d, changed %v; want inactive, 0, %v",
			stored.Status, stored.FailureStreak, stored.StatusChangedAt, changed)
	}
	f.noProxy(f.req("status"), "only proxy set inactive")

	// Same status again: the streak resets, StatusChangedAt stays.
	r := pharox.HealthCheckResult{ProxyID: p.ID, Status: pharox.StatusInactive, FailureThreshold: 5, CheckedAt: time.Now().UTC()}
	if got, err := f.s.ApplyHealthCheckResult(f.ctx, r); err != nil || got.FailureStreak != 1 {
		t.Fatalf("ApplyHealthCheckResult = %+v, %v; want streak 1", got, err)
	}
	time.Sleep(2 * time.Millisecond) // so a wrongly re-stamped time would differ
	got = f.setStatus(p.ID, pharox.StatusInactive)
	if got.FailureStreak != 0 || got.StatusChangedAt == nil || !got.StatusChangedAt.Equal(changed) {
		t.Fatalf("SetProxyStatus to the same status = streak %d, changed %v; want 0, unchanged %v",
			got.FailureStreak, got.StatusChangedAt, changed)
	}

	for _, st := range []pharox.ProxyStatus{pharox.StatusBanned, pharox.StatusSlow, pharox.StatusActive} {
		got = f.setStatus(p.ID, st)
		if got.Status != st || got.StatusChangedAt == nil || got.StatusChangedAt.Before(changed) {
			t.Fatalf("SetProxyStatus(%s) = status %s, changed %v", st, got.Status, got.StatusChangedAt)
		}
		changed = *got.StatusChangedAt
	}
	if l := f.acquire(f.req("status")); l.ProxyID != p.ID {
		t.Fatalf("lease on %s, want the re-activated proxy %s", l.ProxyID, p.ID)
	}
	_, err := f.s.SetProxyStatus(f.ctx, uuid.New(), pharox.StatusActive)
	wantErr(t, "SetProxyStatus(unknown)", err, pharox.ErrProxyNotFound)
}

func testSetProxyStatusKeepsLeases(t *testing.T, f *fixture) {
	pool := f.pool("keep")
	p := f.addN(pool, 1, 2)[0]
	l := f.acquire(f.req("keep"))
	f.setStatus(p.ID, pharox.StatusBanned)
	if got := f.getLease(l.ID); got.Status != pharox.LeaseActive {
		t.Fatalf("lease status after banning its proxy = %s, want active", got.Status)
	}
	f.wantCurrent(p.ID, 1)
	f.noProxy(f.req("keep"), "proxy banned")
	f.release(l.ID)
	f.wantCurrent(p.ID, 0)
}

func testDeleteProxy(t *testing.T, f *fixture) {
	pool := f.pool("del")
	ps := f.addN(pool, 2, 1)
	l1 := f.acquire(f.req("del"))
	l2 := f.acquire(f.req("del"))
	victim, survivor := l1, l2
	wantErr(t, "DeleteProxy with an active lease", f.s.DeleteProxy(f.ctx, victim.ProxyID), pharox.ErrInUse)
	f.getProxy(victim.ProxyID)
	f.release(victim.ID)
	if err := f.s.DeleteProxy(f.ctx, victim.ProxyID); err != nil {
		t.Fatalf("DeleteProxy after release: %v", err)
	}
	_, err := f.s.GetProxy(f.ctx, victim.ProxyID)
	wantErr(t, "GetProxy after delete", err, pharox.ErrProxyNotFound)
	_, err = f.s.GetLease(f.ctx, victim.ID)
	wantErr(t, "GetLease of the deleted proxy's ended lease", err, pharox.ErrLeaseNotFound)
	rest, err := f.s.ListProxies(f.ctx, pool.ID)
	if err != nil || len(rest) != 1 || rest[0].ID != survivor.ProxyID {
		t.Fatalf("ListProxies after delete = %v, %v; want only %s", rest, err, survivor.ProxyID)
	}
	if got := f.getLease(survivor.ID); got.Status != pharox.LeaseActive {
		t.Fatalf("other proxy's lease status = %s, want active", got.Status)
	}
	// The deleted proxy is never leased again.
	f.noProxy(f.req("del"), "remaining proxy full, other deleted")
	wantErr(t, "DeleteProxy(unknown)", f.s.DeleteProxy(f.ctx, uuid.New()), pharox.ErrProxyNotFound)
	wantErr(t, "DeleteProxy twice", f.s.DeleteProxy(f.ctx, victim.ProxyID), pharox.ErrProxyNotFound)
	_ = ps
}
