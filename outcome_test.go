package pharox_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

// Outcome reports through the library: only active leases report, a lease
// gives one failure or ban verdict, and the guard covers failures.

func TestReportOutcomeOnEndedLease(t *testing.T) {
	ctx := context.Background()
	m, store, _ := newPool(t, 1, 10)
	lease, err := m.Acquire(ctx, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Release(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeBanned}); !errors.Is(err, pharox.ErrLeaseNotActive) {
			t.Fatalf("ban on a released lease: %v, want ErrLeaseNotActive", err)
		}
	}
	p, err := store.GetProxy(ctx, lease.ProxyID)
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != pharox.StatusActive || p.FailureStreak != 0 {
		t.Fatalf("proxy after bans on a released lease: %s streak %d", p.Status, p.FailureStreak)
	}
}

// TestReportOutcomeOneVerdictPerLease: concurrent replays of one lease's
// failure count once; a renewal keeps the lease's verdict given.
func TestReportOutcomeOneVerdictPerLease(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newPool(t, 1, 10)
	lease, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Duration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeFailure, Reason: "reset"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if _, err := m.Renew(ctx, lease.ID, time.Hour); err != nil {
		t.Fatal(err)
	}
	p, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: 429})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != pharox.StatusActive || p.FailureStreak != 1 {
		t.Fatalf("after 8 failures and a ban on one lease: %s streak %d, want active with 1", p.Status, p.FailureStreak)
	}
}

// TestReportOutcomeGuardCoversFailures: with half of a pool inactive,
// failures no longer take proxies out of service.
func TestReportOutcomeGuardCoversFailures(t *testing.T) {
	ctx := context.Background()
	policy := pharox.DefaultOutcomePolicy()
	policy.FailureThreshold = 1
	m, _, _ := newPool(t, 4, 10, pharox.WithOutcomePolicy(policy))
	inactive := 0
	for range 4 {
		lease, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Strategy: pharox.LeastUsed})
		if err != nil {
			t.Fatal(err)
		}
		p, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeFailure})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status == pharox.StatusInactive {
			inactive++
		}
	}
	if inactive != 2 {
		t.Fatalf("failure reports made %d of 4 proxies inactive, want 2 (MaxBannedShare 0.5)", inactive)
	}
}

// TestReportOutcomeOneVerdictAcrossManagers: two Managers sharing a store
// (as two processes would) count one failure verdict per lease between
// them, because the store keeps the verdict (LeaseVerdictStore).
func TestReportOutcomeOneVerdictAcrossManagers(t *testing.T) {
	ctx := context.Background()
	m1, store, _ := newPool(t, 1, 10)
	m2 := pharox.NewManager(store)
	lease, err := m1.Acquire(ctx, "main", &pharox.AcquireOptions{Duration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 16 {
		m := []*pharox.Manager{m1, m2}[i%2]
		wg.Go(func() {
			if _, err := m.ReportOutcome(ctx, lease, pharox.Outcome{Kind: pharox.OutcomeFailure, Reason: "reset"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	p, err := store.GetProxy(ctx, lease.ProxyID)
	if err != nil {
		t.Fatal(err)
	}
	if p.FailureStreak != 1 {
		t.Fatalf("16 failure reports on one lease through two Managers: streak %d, want 1", p.FailureStreak)
	}
}
