package pharox_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// failingReleaseStore fails every release, as a store outage would.
type failingReleaseStore struct{ pharox.Storage }

func (failingReleaseStore) ReleaseLease(context.Context, uuid.UUID, *pharox.Usage) (*pharox.Lease, error) {
	return nil, pharox.ErrUnavailable
}

// A nil logger means the default one: a panic inside WithLease whose
// release then fails must reach the caller as the original panic, not as a
// nil-pointer panic from logging the failed release.
func TestWithLeaseNilLoggerKeepsOriginalPanic(t *testing.T) {
	_, store, _ := newPool(t, 1, 1)
	m := pharox.NewManager(failingReleaseStore{store}, pharox.WithLogger(nil))
	if err := m.Err(); err != nil {
		t.Fatalf("a nil logger is not a configuration error: %v", err)
	}
	got := func() (p any) {
		defer func() { p = recover() }()
		_ = m.WithLease(context.Background(), "main", nil, func(context.Context, *pharox.Lease) error {
			panic("original panic")
		})
		return nil
	}()
	if got != "original panic" {
		t.Fatalf("recovered %v, want the original panic", got)
	}
}

func TestNewManagerRejectsInvalidOutcomePolicy(t *testing.T) {
	with := func(change func(*pharox.OutcomePolicy)) pharox.OutcomePolicy {
		p := pharox.DefaultOutcomePolicy()
		change(&p)
		return p
	}
	cases := []struct {
		name   string
		policy pharox.OutcomePolicy
		want   string
	}{
		{"negative failure threshold", with(func(p *pharox.OutcomePolicy) { p.FailureThreshold = -5 }), "FailureThreshold must be at least 1, got -5"},
		{"zero failure threshold", with(func(p *pharox.OutcomePolicy) { p.FailureThreshold = 0 }), "FailureThreshold must be at least 1, got 0"},
		{"zero ban threshold", with(func(p *pharox.OutcomePolicy) { p.BanThreshold = 0 }), "BanThreshold must be at least 1, got 0"},
		{"negative slow latency", with(func(p *pharox.OutcomePolicy) { p.SlowLatency = -time.Second }), "SlowLatency must not be negative, got -1s"},
		{"negative banned share", with(func(p *pharox.OutcomePolicy) { p.MaxBannedShare = -0.1 }), "MaxBannedShare must be between 0 and 1, got -0.1"},
		{"banned share above one", with(func(p *pharox.OutcomePolicy) { p.MaxBannedShare = 1.5 }), "MaxBannedShare must be between 0 and 1, got 1.5"},
		{"NaN banned share", with(func(p *pharox.OutcomePolicy) { p.MaxBannedShare = math.NaN() }), "MaxBannedShare must be between 0 and 1, got NaN"},
		{"ban status code out of range", with(func(p *pharox.OutcomePolicy) { p.BanStatusCodes = []int{429, 42} }), "BanStatusCodes: status code 42 out of range 100-999"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.policy.Validate(); !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v, want ErrInvalidArgument with %q", err, tc.want)
			}
			m, _, _ := newPool(t, 1, 1, pharox.WithOutcomePolicy(tc.policy))
			if err := m.Err(); !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Err: %v, want ErrInvalidArgument with %q", err, tc.want)
			}
		})
	}
}

// Before validation, FailureThreshold -5 was accepted and a single failure
// report deactivated the proxy. An invalid Manager now refuses every call.
func TestInvalidManagerRefusesEveryCall(t *testing.T) {
	ctx := context.Background()
	policy := pharox.DefaultOutcomePolicy()
	policy.FailureThreshold = -5
	valid, store, _ := newPool(t, 1, 1)
	lease, err := valid.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	m := pharox.NewManager(store, pharox.WithOutcomePolicy(policy))

	if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeFailure}); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("ReportOutcome: %v, want ErrInvalidArgument", err)
	}
	p, err := store.GetProxy(ctx, lease.ProxyID)
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != pharox.StatusActive || p.FailureStreak != 0 {
		t.Fatalf("proxy changed by an invalid manager: status %s, streak %d", p.Status, p.FailureStreak)
	}

	calls := map[string]func() error{
		"Acquire":     func() error { _, err := m.Acquire(ctx, "main", nil); return err },
		"AcquireWait": func() error { _, err := m.AcquireWait(ctx, "main", nil); return err },
		"WithLease": func() error {
			return m.WithLease(ctx, "main", nil, func(context.Context, *pharox.Lease) error { return nil })
		},
		"Release":              func() error { _, err := m.Release(ctx, lease.ID); return err },
		"Renew":                func() error { _, err := m.Renew(ctx, lease.ID, time.Minute); return err },
		"EnsureConsumer":       func() error { _, err := m.EnsureConsumer(ctx, "c"); return err },
		"PoolStats":            func() error { _, err := m.PoolStats(ctx, "main"); return err },
		"CleanupExpiredLeases": func() error { _, err := m.CleanupExpiredLeases(ctx); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), "FailureThreshold") {
			t.Errorf("%s: %v, want the configuration error", name, err)
		}
	}
	if l, err := store.GetLease(ctx, lease.ID); err != nil || l.Status != pharox.LeaseActive {
		t.Fatalf("lease touched by an invalid manager: %+v %v", l, err)
	}
}

func TestNewManagerNilStore(t *testing.T) {
	m := pharox.NewManager(nil)
	if err := m.Err(); !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), "store is nil") {
		t.Fatalf("Err: %v, want ErrInvalidArgument naming the store", err)
	}
	if _, err := m.Acquire(context.Background(), "main", nil); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("Acquire: %v, want ErrInvalidArgument", err)
	}
}

// WithOutcomePolicy keeps its own copy: changing the caller's slice later
// does not change the Manager's policy.
func TestWithOutcomePolicyCopiesBanStatusCodes(t *testing.T) {
	ctx := context.Background()
	policy := pharox.DefaultOutcomePolicy()
	policy.BanThreshold, policy.MaxBannedShare = 1, 0
	m, store, _ := newPool(t, 1, 1, pharox.WithOutcomePolicy(policy))
	policy.BanStatusCodes[0] = 200
	lease, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeSuccess, StatusCode: 200}); err != nil {
		t.Fatal(err)
	}
	p, err := store.GetProxy(ctx, lease.ProxyID)
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != pharox.StatusActive {
		t.Fatalf("a 200 banned the proxy through the caller's slice: %s", p.Status)
	}
}
