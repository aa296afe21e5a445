package storagetest

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

var statsTests = []subtest{
	{name: "Occupancy", fn: testStats},
}

// statsModel is the test's own account of a pool, from which it derives
// the stats a store must report.
type statsModel struct {
	maxc   map[uuid.UUID]int // 0 = unlimited
	status map[uuid.UUID]pharox.ProxyStatus
	leases map[uuid.UUID]int
}

func (m *statsModel) want(pool string) pharox.PoolStats {
	w := pharox.PoolStats{PoolName: pool, ByStatus: map[pharox.ProxyStatus]int{}}
	for id, st := range m.status {
		w.TotalProxies++
		w.ByStatus[st]++
		n := m.leases[id]
		w.TotalLeases += n
		if n > 0 {
			w.LeasedProxies++
		}
		if st.Leasable() {
			w.ActiveProxies++
			if m.maxc[id] == 0 || n < m.maxc[id] {
				w.AvailableProxies++
			}
		}
	}
	return w
}

func (f *fixture) wantStats(step, pool string, m *statsModel) {
	f.t.Helper()
	before := time.Now()
	got := f.stats(pool)
	want := m.want(pool)
	if got.PoolName != want.PoolName || got.TotalProxies != want.TotalProxies || got.ActiveProxies != want.ActiveProxies ||
		got.AvailableProxies != want.AvailableProxies || got.LeasedProxies != want.LeasedProxies || got.TotalLeases != want.TotalLeases {
		f.t.Fatalf("stats %s:\n got pool=%q total=%d active=%d available=%d leased=%d leases=%d\nwant pool=%q total=%d active=%d available=%d leased=%d leases=%d",
			step, got.PoolName, got.TotalProxies, got.ActiveProxies, got.AvailableProxies, got.LeasedProxies, got.TotalLeases,
			want.PoolName, want.TotalProxies, want.ActiveProxies, want.AvailableProxies, want.LeasedProxies, want.TotalLeases)
	}
	for st, n := range got.ByStatus {
		if !st.Valid() && n != 0 {
			f.t.Fatalf("stats %s: ByStatus has unknown status %q", step, st)
		}
	}
	for _, st := range pharox.AllProxyStatuses {
		if got.ByStatus[st] != want.ByStatus[st] {
			f.t.Fatalf("stats %s: ByStatus = %v, want %v", step, got.ByStatus, want.ByStatus)
		}
	}
	plausibleNow(f.t, "stats CollectedAt", got.CollectedAt, before, time.Now())
}

func testStats(t *testing.T, f *fixture) {
	pool := f.pool("stats")
	other := f.pool("stats-other")
	in := []pharox.Proxy{f.proxy(pool), f.proxy(pool), f.proxy(pool), f.proxy(pool), f.proxy(pool)}
	in[0].MaxConcurrency = ptrutil.Ptr(1)
	in[1].MaxConcurrency = ptrutil.Ptr(2)
	in[2].Status = pharox.StatusSlow
	in[3].Status = pharox.StatusInactive
	in[3].MaxConcurrency = ptrutil.Ptr(1)
	in[4].Status = pharox.StatusBanned
	out := f.add(in...)
	f.addN(other, 3, 0) // another pool's proxies and leases never count
	f.acquire(f.req("stats-other"))

	m := &statsModel{maxc: map[uuid.UUID]int{}, status: map[uuid.UUID]pharox.ProxyStatus{}, leases: map[uuid.UUID]int{}}
	for i, p := range out {
		m.status[p.ID] = in[i].Status
		if in[i].MaxConcurrency != nil {
			m.maxc[p.ID] = *in[i].MaxConcurrency
		}
	}
	f.wantStats("of a fresh pool", "stats", m)

	var held []*pharox.Lease
	for range 4 {
		l := f.acquire(f.req("stats"))
		m.leases[l.ProxyID]++
		held = append(held, l)
		f.wantStats("after an acquisition", "stats", m)
	}
	f.setStatus(out[3].ID, pharox.StatusActive)
	m.status[out[3].ID] = pharox.StatusActive
	f.wantStats("after a status change", "stats", m)
	f.setStatus(out[2].ID, pharox.StatusBanned)
	m.status[out[2].ID] = pharox.StatusBanned
	f.wantStats("after banning a leased proxy", "stats", m)

	f.release(held[0].ID)
	m.leases[held[0].ProxyID]--
	f.wantStats("after a release", "stats", m)

	req := f.req("stats")
	req.Duration = shortTTL
	start := time.Now()
	l := f.acquire(req)
	m.leases[l.ProxyID]++
	exact := beforeShortExpiry(start)
	if exact {
		f.wantStats("after a short acquisition", "stats", m)
	}
	// The stats read may have reclaimed the lease if it took long.
	exact = exact && beforeShortExpiry(start)
	time.Sleep(shortWait)
	if n, err := f.s.CleanupExpiredLeases(f.ctx); err != nil || n > 1 || exact && n != 1 {
		t.Fatalf("CleanupExpiredLeases = %d, %v; want 1 (the other pool's lease is long)", n, err)
	}
	m.leases[l.ProxyID]--
	f.wantStats("after expiry and cleanup", "stats", m)

	hc := pharox.HealthCheckResult{ProxyID: out[4].ID, Status: pharox.StatusActive, CheckedAt: time.Now().UTC()}
	if _, err := f.s.ApplyHealthCheckResult(f.ctx, hc); err != nil {
		t.Fatalf("ApplyHealthCheckResult: %v", err)
	}
	m.status[out[4].ID] = pharox.StatusActive
	f.wantStats("after a health check recovered a banned proxy", "stats", m)

	if err := f.s.DeleteProxy(f.ctx, out[4].ID); err != nil {
		t.Fatalf("DeleteProxy: %v", err)
	}
	delete(m.status, out[4].ID)
	f.wantStats("after deleting a proxy", "stats", m)
	added := f.addN(pool, 1, 1)[0]
	m.status[added.ID], m.maxc[added.ID] = pharox.StatusActive, 1
	f.wantStats("after adding a proxy", "stats", m)

	// Mutating the returned map changes nothing stored.
	st := f.stats("stats")
	st.ByStatus[pharox.StatusActive] = 999
	st.TotalLeases = 999
	f.wantStats("after mutating a returned snapshot", "stats", m)
}
