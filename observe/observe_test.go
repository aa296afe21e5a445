package observe_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/observe"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// setup makes a memory store with pool "main" of n exclusive proxies, one
// of them with a password.
func setup(t *testing.T, n int) pharox.Storage {
	t.Helper()
	ctx := context.Background()
	s := testfactory.Memory(t)
	t.Cleanup(func() { _ = s.Close() })
	pool, err := pharox.BootstrapPool(ctx, s, "main", "")
	if err != nil {
		t.Fatal(err)
	}
	one := 1
	for i := range n {
		p := pharox.Proxy{Host: "10.0.0." + string(rune('1'+i)), Port: 8080, Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one}
		if i == 0 {
			p.Credentials = &pharox.Credentials{User: "u", Password: "hunter2-secret"}
		}
		if _, err := pharox.BootstrapProxy(ctx, s, pool, p); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestPrometheusRecordsRealAcquisitions(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	rec, err := observe.NewPrometheus(reg, observe.PrometheusOptions{ConsumerLabels: true})
	if err != nil {
		t.Fatal(err)
	}
	mgr := pharox.NewManager(setup(t, 2), rec.ManagerOptions()...)

	opts := &pharox.AcquireOptions{Consumer: "w1", Strategy: pharox.LeastUsed}
	a, err := mgr.Acquire(ctx, "main", opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Acquire(ctx, "main", opts); err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Acquire(ctx, "main", opts); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("third acquire: %v, want a miss", err)
	}
	if _, err := mgr.Acquire(ctx, "nope", opts); !errors.Is(err, pharox.ErrPoolNotFound) {
		t.Fatalf("unknown pool: %v", err)
	}
	for _, c := range []struct {
		pool, status string
		want         float64
	}{{"main", "hit", 2}, {"main", "miss", 1}, {"_unknown", "error", 1}} {
		got := testutil.ToFloat64(rec.AcquireTotal().WithLabelValues(c.pool, "w1", "least_used", c.status))
		if got != c.want {
			t.Errorf("acquire_total{pool=%s,status=%s} = %v, want %v", c.pool, c.status, got, c.want)
		}
	}
	gauge := func(name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "main" {
					return m.GetGauge().GetValue()
				}
			}
		}
		t.Fatalf("no %s for pool main", name)
		return 0
	}
	if got := gauge("pharox_pool_proxies_available"); got != 0 {
		t.Errorf("available = %v after leasing both proxies", got)
	}
	if got := gauge("pharox_pool_proxies_leased"); got != 2 {
		t.Errorf("leased = %v, want 2", got)
	}

	time.Sleep(10 * time.Millisecond)
	if _, err := mgr.Release(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(rec.ReleaseTotal().WithLabelValues("main", "w1")); got != 1 {
		t.Errorf("release_total = %v, want 1", got)
	}
	if got := gauge("pharox_pool_proxies_available"); got != 1 {
		t.Errorf("available = %v after one release, want 1", got)
	}
	if got := gauge("pharox_pool_leases_active"); got != 1 {
		t.Errorf("leases_active = %v, want 1", got)
	}
	if n := testutil.CollectAndCount(reg, "pharox_acquire_duration_seconds"); n != 3 {
		t.Errorf("acquire_duration_seconds has %d series, want 3 (hit, miss, error)", n)
	}
	if n := testutil.CollectAndCount(reg, "pharox_lease_duration_seconds"); n != 1 {
		t.Errorf("lease_duration_seconds has %d series, want 1", n)
	}

	rec.ObserveSweep("main", map[string]int{"active": 3, "banned": 1, "slow": 0})
	if got := testutil.ToFloat64(rec.HealthChecks().WithLabelValues("main", "active")); got != 3 {
		t.Errorf("health_checks_total{active} = %v, want 3", got)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	if _, err := observe.NewPrometheus(reg, observe.PrometheusOptions{}); err == nil {
		t.Error("registering twice on one registry should fail")
	}
}

// TestPrometheusNoConsumerLabelsByDefault: consumer names, which clients
// choose, label no series unless asked for.
func TestPrometheusNoConsumerLabelsByDefault(t *testing.T) {
	reg := prometheus.NewRegistry()
	rec, err := observe.NewPrometheus(reg, observe.PrometheusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mgr := pharox.NewManager(setup(t, 1), rec.ManagerOptions()...)
	if _, err := mgr.Acquire(context.Background(), "main", &pharox.AcquireOptions{Consumer: "secret-tenant"}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(rec.AcquireTotal().WithLabelValues("main", "", "first_available", "hit")); got != 1 {
		t.Fatalf("acquire_total without consumer = %v", got)
	}
}

func TestTracingSpans(t *testing.T) {
	ctx := context.Background()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	t.Cleanup(func() { _ = tp.Shutdown(ctx) })
	mgr := pharox.NewManager(setup(t, 1), observe.Tracing(tp)...)

	parentCtx, parent := tp.Tracer("test").Start(ctx, "job")
	l, err := mgr.Acquire(parentCtx, "main", &pharox.AcquireOptions{Consumer: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Acquire(parentCtx, "main", nil); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("want a miss, got %v", err)
	}
	if _, err := mgr.Release(parentCtx, l.ID); err != nil {
		t.Fatal(err)
	}
	parent.End()

	var acquires, releases []sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		switch s.Name() {
		case "pharox.acquire":
			acquires = append(acquires, s)
		case "pharox.release":
			releases = append(releases, s)
		}
	}
	if len(acquires) != 2 || len(releases) != 1 {
		t.Fatalf("%d acquire and %d release spans, want 2 and 1", len(acquires), len(releases))
	}
	attr := func(s sdktrace.ReadOnlySpan, key string) string {
		for _, kv := range s.Attributes() {
			if kv.Key == attribute.Key(key) {
				return kv.Value.String()
			}
		}
		return ""
	}
	if attr(acquires[0], "pharox.result") != "hit" || attr(acquires[0], "pharox.lease_id") != l.ID.String() ||
		attr(acquires[0], "pharox.pool") != "main" || attr(acquires[0], "pharox.consumer") != "w" {
		t.Errorf("hit span attributes: %v", acquires[0].Attributes())
	}
	if attr(acquires[1], "pharox.result") != "miss" {
		t.Errorf("miss span attributes: %v", acquires[1].Attributes())
	}
	if attr(releases[0], "pharox.lease_id") != l.ID.String() {
		t.Errorf("release span attributes: %v", releases[0].Attributes())
	}
	for _, s := range append(acquires, releases...) {
		if s.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("%s is not a child of the caller's span", s.Name())
		}
		for _, kv := range s.Attributes() {
			if strings.Contains(kv.Value.String(), "hunter2") {
				t.Errorf("span %s carries the password", s.Name())
			}
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLoggingSamplesHitsAndLogsMisses(t *testing.T) {
	ctx := context.Background()
	var buf syncBuffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store := setup(t, 1)
	mgr := pharox.NewManager(store, observe.Logging(l, 3)...)
	for range 7 {
		lease, err := mgr.Acquire(ctx, "main", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := mgr.Release(ctx, lease.ID); err != nil {
			t.Fatal(err)
		}
	}
	lease, err := mgr.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := mgr.Acquire(ctx, "main", nil); !errors.Is(err, pharox.ErrNoProxyAvailable) {
			t.Fatalf("want a miss, got %v", err)
		}
	}
	_ = lease
	out := buf.String()
	// Hits 1, 4 and 7 of 8 are logged; both misses are.
	if n := strings.Count(out, "lease acquired"); n != 3 {
		t.Errorf("%d hits logged, want 3 of 8 with every=3:\n%s", n, out)
	}
	if n := strings.Count(out, "no proxy available"); n != 2 {
		t.Errorf("%d misses logged, want 2:\n%s", n, out)
	}
	if !strings.Contains(out, "10.0.0.1") || strings.Contains(out, "hunter2") {
		t.Errorf("log must name the proxy without its password:\n%s", out)
	}
}

// TestPrometheusCountsAcquisitionsForASite: acquisitions that name a site
// are counted by pool and result, with no label per site.
func TestPrometheusCountsAcquisitionsForASite(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	rec, err := observe.NewPrometheus(reg, observe.PrometheusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mgr := pharox.NewManager(setup(t, 1), rec.ManagerOptions()...)
	l, err := mgr.Acquire(ctx, "main", &pharox.AcquireOptions{Target: "https://shop.example.com/"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.ReportOutcome(ctx, l, pharox.Outcome{Kind: pharox.OutcomeBanned, Target: "shop.example.com"}); err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Acquire(ctx, "main", &pharox.AcquireOptions{Target: "example.com"}); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("acquire for the site the only proxy cools down for: %v, want ErrNoProxyAvailable", err)
	}
	if _, err := mgr.Acquire(ctx, "main", nil); err != nil {
		t.Fatal(err)
	}
	for status, want := range map[string]float64{observe.StatusHit: 1, observe.StatusMiss: 1} {
		if got := testutil.ToFloat64(rec.TargetAcquire().WithLabelValues("main", status)); got != want {
			t.Errorf("target acquisitions %s = %v, want %v", status, got, want)
		}
	}
	if n := testutil.CollectAndCount(reg, "pharox_target_acquire_total"); n != 2 {
		t.Errorf("%d target acquisition series, want hit and miss only", n)
	}
}

// TestPrometheusCountsQuotaRefusalsAndUsage: an acquisition a quota
// refuses counts as refused and by subject and limit, and the usage
// reported at release adds up by pool, never by consumer or site; the
// refusal is logged at Info, not as an error.
func TestPrometheusCountsQuotaRefusalsAndUsage(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	rec, err := observe.NewPrometheus(reg, observe.PrometheusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var buf syncBuffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store := setup(t, 2)
	mgr := pharox.NewManager(store, append(rec.ManagerOptions(), observe.Logging(l, 1)...)...)
	c, err := mgr.EnsureConsumer(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1}}); err != nil {
		t.Fatal(err)
	}
	opts := &pharox.AcquireOptions{Consumer: "w", Target: "shop.example.com"}
	lease, err := mgr.Acquire(ctx, "main", opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Acquire(ctx, "main", opts); !errors.Is(err, pharox.ErrQuotaExceeded) {
		t.Fatalf("second acquisition: %v, want a quota refusal", err)
	}
	if _, err := mgr.ReleaseWithUsage(ctx, lease.ID, pharox.Usage{Requests: 3, BytesSent: 40, BytesReceived: 500}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"quota_refusals_total{consumer,max_concurrent_leases}", testutil.ToFloat64(rec.QuotaRefusals().WithLabelValues("consumer", "max_concurrent_leases")), 1},
		{"acquire_total{refused}", testutil.ToFloat64(rec.AcquireTotal().WithLabelValues("main", "", "first_available", "refused")), 1},
		{"acquire_total{error}", testutil.ToFloat64(rec.AcquireTotal().WithLabelValues("main", "", "first_available", "error")), 0},
		{"usage_bytes_total{main,sent}", testutil.ToFloat64(rec.UsageBytes().WithLabelValues("main", "sent")), 40},
		{"usage_bytes_total{main,received}", testutil.ToFloat64(rec.UsageBytes().WithLabelValues("main", "received")), 500},
		{"usage_requests_total{main}", testutil.ToFloat64(rec.UsageRequests().WithLabelValues("main")), 3},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// A release without usage, and a second release, add nothing.
	lease, err = mgr.Acquire(ctx, "main", opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Release(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.ReleaseWithUsage(ctx, lease.ID, pharox.Usage{BytesSent: 1}); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Fatalf("second release: %v", err)
	}
	if got := testutil.ToFloat64(rec.UsageBytes().WithLabelValues("main", "sent")); got != 40 {
		t.Errorf("usage_bytes_total{main,sent} = %v after releases without usage, want 40", got)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	out := buf.String()
	if !strings.Contains(out, "level=INFO msg=\"pharox: acquire refused by a quota\"") || strings.Contains(out, "level=ERROR") {
		t.Errorf("a quota refusal must be logged at Info, once:\n%s", out)
	}
}
