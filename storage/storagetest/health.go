package storagetest

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var healthTests = []subtest{
	{name: "ApplyResult", fn: testApplyHealth},
	{name: "UnknownProxy", fn: testApplyHealthUnknown},
	{name: "KeepsLeases", fn: testApplyHealthKeepsLeases},
}

// sameHealth compares the health fields of got with the reference want.
func sameHealth(t testing.TB, step string, got, want *pharox.Proxy) {
	t.Helper()
	eqTime := func(a, b *time.Time) bool { return a == nil && b == nil || a != nil && b != nil && a.Equal(*b) }
	if got.Status != want.Status || got.FailureStreak != want.FailureStreak || !eqTime(got.CheckedAt, want.CheckedAt) ||
		!eqTime(got.StatusChangedAt, want.StatusChangedAt) || got.LatencyMS != want.LatencyMS ||
		got.LastError != want.LastError || got.LastStatusCode != want.LastStatusCode {
		t.Fatalf("%s:\n got status=%s streak=%d checked=%v changed=%v latency=%d error=%q code=%d\nwant status=%s streak=%d checked=%v changed=%v latency=%d error=%q code=%d",
			step, got.Status, got.FailureStreak, deref(got.CheckedAt), deref(got.StatusChangedAt), got.LatencyMS, got.LastError, got.LastStatusCode,
			want.Status, want.FailureStreak, deref(want.CheckedAt), deref(want.StatusChangedAt), want.LatencyMS, want.LastError, want.LastStatusCode)
	}
}

func testApplyHealth(t *testing.T, f *fixture) {
	pool := f.pool("health")
	p := f.addN(pool, 1, 0)[0]
	ref := p.Clone() // the reference model, driven by Proxy.ApplyHealthCheck
	base := time.Now().UTC().Truncate(time.Millisecond).Add(-time.Hour)

	steps := []struct {
		name       string
		r          pharox.HealthCheckResult
		wantStatus pharox.ProxyStatus
		wantStreak int
	}{
		{"first failure below threshold", pharox.HealthCheckResult{Status: pharox.StatusInactive, FailureThreshold: 3,
			Error: "connection refused", ErrorKind: "refused", Latency: 1500 * time.Millisecond}, pharox.StatusActive, 1},
		{"second failure below threshold", pharox.HealthCheckResult{Status: pharox.StatusInactive, FailureThreshold: 3,
			Error: "timeout", ErrorKind: "timeout", Latency: 5 * time.Second}, pharox.StatusActive, 2},
		{"third failure reaches threshold", pharox.HealthCheckResult{Status: pharox.StatusInactive, FailureThreshold: 3,
			Error: "timeout", StatusCode: 0}, pharox.StatusInactive, 3},
		{"banned past threshold", pharox.HealthCheckResult{Status: pharox.StatusBanned, FailureThreshold: 3,
			Error: "403", StatusCode: 403}, pharox.StatusBanned, 4},
		{"recovers slow", pharox.HealthCheckResult{Status: pharox.StatusSlow, Latency: 2200 * time.Millisecond,
			StatusCode: 200}, pharox.StatusSlow, 0},
		{"recovers active", pharox.HealthCheckResult{Status: pharox.StatusActive, Latency: 80 * time.Millisecond,
			StatusCode: 204}, pharox.StatusActive, 0},
		{"active again keeps StatusChangedAt", pharox.HealthCheckResult{Status: pharox.StatusActive, Latency: 90 * time.Millisecond,
			StatusCode: 200}, pharox.StatusActive, 0},
		{"failure with threshold 0 applies at once", pharox.HealthCheckResult{Status: pharox.StatusInactive,
			Error: "proxy auth required", StatusCode: 407}, pharox.StatusInactive, 1},
		{"healthy after one failure", pharox.HealthCheckResult{Status: pharox.StatusActive, StatusCode: 200}, pharox.StatusActive, 0},
		{"failure with threshold 2", pharox.HealthCheckResult{Status: pharox.StatusBanned, FailureThreshold: 2}, pharox.StatusActive, 1},
	}
	for i, s := range steps {
		r := s.r
		r.ProxyID = p.ID
		r.CheckedAt = base.Add(time.Duration(i) * time.Minute)
		ref.ApplyHealthCheck(r)
		if ref.Status != s.wantStatus || ref.FailureStreak != s.wantStreak {
			t.Fatalf("test bug: step %q: reference gives %s/%d, case says %s/%d", s.name, ref.Status, ref.FailureStreak, s.wantStatus, s.wantStreak)
		}
		got, err := f.s.ApplyHealthCheckResult(f.ctx, r)
		if err != nil {
			t.Fatalf("ApplyHealthCheckResult (%s): %v", s.name, err)
		}
		if got == nil {
			t.Fatalf("ApplyHealthCheckResult (%s) returned nil for a known proxy", s.name)
		}
		if got.ID != p.ID {
			t.Fatalf("ApplyHealthCheckResult returned proxy %s, want %s", got.ID, p.ID)
		}
		sameHealth(t, "ApplyHealthCheckResult result after "+s.name, got, ref)
		sameHealth(t, "GetProxy after "+s.name, f.getProxy(p.ID), ref)
		// Leasing follows the status.
		req := f.req("health")
		if ref.Status.Leasable() {
			f.release(f.acquire(req).ID)
		} else {
			f.noProxy(req, "proxy "+string(ref.Status)+" after "+s.name)
		}
	}
}

func testApplyHealthUnknown(t *testing.T, f *fixture) {
	f.addN(f.pool("h-unknown"), 1, 0)
	p, err := f.s.ApplyHealthCheckResult(f.ctx, pharox.HealthCheckResult{
		ProxyID: uuid.New(), Status: pharox.StatusInactive, CheckedAt: time.Now().UTC()})
	if err != nil || p != nil {
		t.Fatalf("ApplyHealthCheckResult(unknown proxy) = %v, %v; want nil, nil", p, err)
	}
}

func testApplyHealthKeepsLeases(t *testing.T, f *fixture) {
	pool := f.pool("h-leases")
	p := f.addN(pool, 1, 2)[0]
	l := f.acquire(f.req("h-leases"))
	got, err := f.s.ApplyHealthCheckResult(f.ctx, pharox.HealthCheckResult{
		ProxyID: p.ID, Status: pharox.StatusBanned, CheckedAt: time.Now().UTC(), Error: "banned"})
	if err != nil {
		t.Fatalf("ApplyHealthCheckResult: %v", err)
	}
	if got.Status != pharox.StatusBanned || got.CurrentLeases != 1 {
		t.Fatalf("after a ban: status %s current %d, want banned with its lease still counted", got.Status, got.CurrentLeases)
	}
	// Health data is not lease data: the count, limits and identity stay.
	if got.MaxConcurrency == nil || *got.MaxConcurrency != 2 || got.Host != p.Host || got.Port != p.Port {
		t.Fatalf("ApplyHealthCheckResult changed non-health fields: %+v", got)
	}
	if lg := f.getLease(l.ID); lg.Status != pharox.LeaseActive {
		t.Fatalf("lease after its proxy was banned = %s, want active", lg.Status)
	}
	f.release(l.ID)
	f.wantCurrent(p.ID, 0)
}
