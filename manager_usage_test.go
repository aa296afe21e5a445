package pharox_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

// capConsumer gives the named consumer a quota with these limits.
func capConsumer(t *testing.T, m *pharox.Manager, name string, limits pharox.QuotaLimits) *pharox.Consumer {
	t.Helper()
	c, err := m.EnsureConsumer(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.SetQuota(t.Context(), pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID, QuotaLimits: limits}); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestReleaseWithUsageRejectsBadUsage(t *testing.T) {
	ctx := t.Context()
	m, _, _ := newPool(t, 1, 1)
	lease, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		u    pharox.Usage
		want string
	}{
		{pharox.Usage{BytesSent: -1}, "usage: bytes_sent must not be negative, got -1"},
		{pharox.Usage{Requests: -3}, "usage: requests must not be negative, got -3"},
		{pharox.Usage{BytesReceived: pharox.MaxUsageBytes + 1}, "usage: bytes_received 1125899906842625 is above the maximum 1125899906842624"},
	} {
		_, err := m.ReleaseWithUsage(ctx, lease.ID, tc.u)
		if !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Fatalf("ReleaseWithUsage(%+v): err = %v, want ErrInvalidArgument", tc.u, err)
		}
		if msg := err.Error(); !strings.HasSuffix(msg, tc.want) || strings.Count(msg, ". ") > 0 || !strings.Contains(msg, lease.ID.String()) {
			t.Fatalf("ReleaseWithUsage(%+v): error %q, want one sentence naming the lease and ending %q", tc.u, msg, tc.want)
		}
	}
	// The refused reports left the lease active; a good one ends it.
	u := pharox.Usage{Requests: 2, BytesSent: 10, BytesReceived: 300}
	ended, err := m.ReleaseWithUsage(ctx, lease.ID, u)
	if err != nil {
		t.Fatalf("ReleaseWithUsage after refused reports: %v", err)
	}
	if ended.Usage == nil || *ended.Usage != u {
		t.Fatalf("released lease Usage = %v, want %+v", ended.Usage, u)
	}
	if _, err := m.ReleaseWithUsage(ctx, lease.ID, u); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Fatalf("second ReleaseWithUsage: %v, want ErrLeaseNotActive", err)
	}
}

func TestAcquireNamesQuotaError(t *testing.T) {
	ctx := t.Context()
	m, _, pool := newPool(t, 3, 10)
	capConsumer(t, m, "scraper-1", pharox.QuotaLimits{MaxConcurrentLeases: 1})
	opts := &pharox.AcquireOptions{Consumer: "scraper-1"}
	if _, err := m.Acquire(ctx, "main", opts); err != nil {
		t.Fatal(err)
	}
	_, err := m.Acquire(ctx, "main", opts)
	qe, ok := errors.AsType[*pharox.QuotaError](err)
	if !ok || !errors.Is(err, pharox.ErrQuotaExceeded) {
		t.Fatalf("Acquire over the consumer's cap: %v, want a *QuotaError", err)
	}
	if qe.Name != "scraper-1" || qe.Subject != pharox.QuotaConsumer {
		t.Fatalf("QuotaError names %s %q, want consumer scraper-1", qe.Subject, qe.Name)
	}
	if want := `consumer "scraper-1" is over its quota max_concurrent_leases=1 (retry in 1s)`; !strings.Contains(err.Error(), want) {
		t.Fatalf("Acquire error %q, want it to say %q", err, want)
	}
	if _, err := m.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1}}); err != nil {
		t.Fatal(err)
	}
	_, err = m.Acquire(ctx, "main", &pharox.AcquireOptions{Consumer: "other"})
	if qe, ok := errors.AsType[*pharox.QuotaError](err); !ok || qe.Name != "main" || qe.Subject != pharox.QuotaPool {
		t.Fatalf("Acquire over the pool's cap: %v, want a *QuotaError naming pool main", err)
	}
}

// TestAcquireWaitWaitsOutConsumerCap: AcquireWait keeps trying while the
// consumer is at its cap and succeeds once a lease is released.
func TestAcquireWaitWaitsOutConsumerCap(t *testing.T) {
	ctx := t.Context()
	m, _, _ := newPool(t, 2, 10)
	capConsumer(t, m, "scraper-1", pharox.QuotaLimits{MaxConcurrentLeases: 1})
	opts := &pharox.AcquireOptions{Consumer: "scraper-1"}
	held, err := m.Acquire(ctx, "main", opts)
	if err != nil {
		t.Fatal(err)
	}
	released := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		_, err := m.Release(ctx, held.ID)
		released <- err
	}()
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	lease, err := m.AcquireWait(wait, "main", opts)
	if err != nil {
		t.Fatalf("AcquireWait while the only allowed lease is released after 100ms: %v", err)
	}
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if lease.ConsumerName != "scraper-1" || lease.ID == held.ID {
		t.Fatalf("AcquireWait returned %+v", lease)
	}
	if elapsed := time.Since(start); elapsed < 100*time.Millisecond {
		t.Fatalf("AcquireWait succeeded after %v, before the held lease was released", elapsed)
	}
}

// TestAcquireWaitQuotaCtxEnds: when ctx ends while the quota still
// refuses, the error is the named QuotaError joined with ctx's; a byte
// quota, which lasts the day, is not waited for.
func TestAcquireWaitQuotaCtxEnds(t *testing.T) {
	ctx := t.Context()
	m, _, _ := newPool(t, 2, 10)
	capConsumer(t, m, "scraper-1", pharox.QuotaLimits{MaxConcurrentLeases: 1})
	opts := &pharox.AcquireOptions{Consumer: "scraper-1"}
	if _, err := m.Acquire(ctx, "main", opts); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	_, err := m.AcquireWait(short, "main", opts)
	if !errors.Is(err, pharox.ErrQuotaExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AcquireWait refused until its context ended: %v, want ErrQuotaExceeded and DeadlineExceeded", err)
	}
	if errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("AcquireWait refused by a quota reports a proxy miss: %v", err)
	}
	if qe, ok := errors.AsType[*pharox.QuotaError](err); !ok || qe.Name != "scraper-1" || qe.Limit != pharox.LimitMaxConcurrentLeases {
		t.Fatalf("AcquireWait error %v, want the QuotaError of consumer scraper-1's max_concurrent_leases", err)
	}

	spent := capConsumer(t, m, "spender", pharox.QuotaLimits{BytesPerDay: 100})
	l, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Consumer: spent.Name})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.ReleaseWithUsage(ctx, l.ID, pharox.Usage{BytesReceived: 100}); err != nil {
		t.Fatal(err)
	}
	long, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	_, err = m.AcquireWait(long, "main", &pharox.AcquireOptions{Consumer: spent.Name})
	if qe, ok := errors.AsType[*pharox.QuotaError](err); !ok || qe.Limit != pharox.LimitBytesPerDay {
		t.Fatalf("AcquireWait over bytes_per_day: %v, want its QuotaError", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("AcquireWait waited %v on a byte quota that lasts until the day ends", elapsed)
	}
}

func TestManagerUsageFillsNames(t *testing.T) {
	ctx := t.Context()
	m, _, pool := newPool(t, 1, 10)
	lease, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Consumer: "scraper-1", Target: "https://Shop.Example/cart"})
	if err != nil {
		t.Fatal(err)
	}
	if lease.Target != "shop.example" {
		t.Fatalf("lease Target = %q, want the normalized shop.example", lease.Target)
	}
	u := pharox.Usage{Requests: 4, BytesSent: 512, BytesReceived: 8192}
	if _, err := m.ReleaseWithUsage(ctx, lease.ID, u); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		g         pharox.UsageGroup
		key, name string
	}{
		{pharox.UsageByConsumer, lease.ConsumerID.String(), "scraper-1"},
		{pharox.UsageByPool, pool.ID.String(), "main"},
		{pharox.UsageByProxy, lease.ProxyID.String(), "10.0.0.1:8080"},
		{pharox.UsageByTarget, "shop.example", ""},
	} {
		rows, err := m.Usage(ctx, pharox.UsageQuery{GroupBy: tc.g})
		if err != nil {
			t.Fatalf("Usage by %s: %v", tc.g, err)
		}
		want := pharox.UsageRow{Key: tc.key, Name: tc.name, Leases: 1, Usage: u}
		if len(rows) != 1 || rows[0] != want {
			t.Fatalf("Usage by %s = %+v, want [%+v]", tc.g, rows, want)
		}
	}
	if _, err := m.Usage(ctx, pharox.UsageQuery{GroupBy: "country"}); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("Usage by country: %v, want ErrInvalidArgument", err)
	}
	// Quotas are named too.
	if _, err := m.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: pharox.QuotaLimits{BytesPerMonth: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: lease.ProxyID, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	qs, err := m.Quotas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 2 || qs[0].Name != "main" || qs[1].Name != "10.0.0.1:8080" {
		t.Fatalf("Quotas: %d, names %q; want pool main then proxy 10.0.0.1:8080", len(qs), quotaNames(qs))
	}
	if qs[0].BytesThisMonth != u.Bytes() {
		t.Fatalf("the pool's new quota counts %d bytes this month, want the %d already reported", qs[0].BytesThisMonth, u.Bytes())
	}
}

func quotaNames(qs []*pharox.Quota) []string {
	out := make([]string, len(qs))
	for i, q := range qs {
		out[i] = q.Name
	}
	return out
}
