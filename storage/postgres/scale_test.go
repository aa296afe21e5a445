package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

// TestFilterScanBudget: a filter that matches none of the free proxies
// within the scan budget ends the call with ErrNoProxyAvailable saying the
// filter is too selective; busy proxies never count against the budget,
// so once the proxies ahead of the match are leased, it is found.
func TestFilterScanBudget(t *testing.T) {
	const budget = 10
	s := newTestStore(t, WithFilterScanBudget(budget))
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "budget"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	in := make([]pharox.Proxy, 2*budget+1)
	for i := range in {
		in[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.9.0.%d", i+1), Port: 8080, Protocol: pharox.ProtocolHTTP,
			MaxConcurrency: ptrutil.Ptr(1), Country: "US"}
	}
	in[len(in)-1].Country = "XX"
	ps, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	// The match is the only slow proxy: last in FirstAvailable order.
	rare := ps[len(ps)-1]
	if _, err := s.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{ProxyID: rare.ID, Status: pharox.StatusSlow, CheckedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: "budget", ConsumerID: c.ID, Duration: time.Minute,
		Strategy: pharox.FirstAvailable, Filters: &pharox.Filters{Country: "XX"}}
	_, err = s.AcquireLease(ctx, req)
	if !errors.Is(err, pharox.ErrNoProxyAvailable) || !strings.Contains(err.Error(), "too selective") {
		t.Fatalf("AcquireLease with a filter matching beyond the scan budget: %v; want ErrNoProxyAvailable saying the filter is too selective", err)
	}
	// Lease every proxy ahead of it: they leave the walk.
	for range 2 * budget {
		if _, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "budget", ConsumerID: c.ID, Duration: time.Minute,
			Strategy: pharox.FirstAvailable, Filters: &pharox.Filters{Country: "US"}}); err != nil {
			t.Fatal(err)
		}
	}
	l, err := s.AcquireLease(ctx, req)
	if err != nil || l.ProxyID != rare.ID {
		t.Fatalf("AcquireLease with every proxy ahead of the match busy = %v, %v; want a lease on %s", l, err, rare.ID)
	}
	// Now the pool is full: the plain answer, without the detail.
	_, err = s.AcquireLease(ctx, req)
	if !errors.Is(err, pharox.ErrNoProxyAvailable) || strings.Contains(err.Error(), "too selective") {
		t.Fatalf("AcquireLease from a full pool: %v; want plain ErrNoProxyAvailable", err)
	}
}

func TestWithFilterScanBudgetRange(t *testing.T) {
	for _, n := range []int{0, 9, 1_000_001} {
		if _, err := buildConfig([]Option{WithFilterScanBudget(n)}); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("WithFilterScanBudget(%d): %v, want ErrInvalidArgument", n, err)
		}
	}
}

// TestCleanupNeverFailsAcquisitions: while a cleanup ends the expired
// leases of every proxy of a full pool, acquisitions with the default
// attempts all succeed: they take the slots cleanup frees, or reclaim an
// expired lease themselves. (Before, one cleanup transaction locked every
// proxy row it freed, up to 1,000, across several round trips, and the
// acquisitions ran out of tries.)
func TestCleanupNeverFailsAcquisitions(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	const n = 1000
	_, c := seedPool(t, s, "cleanup", n, 1)
	// Every slot, with leases that expire at once.
	short := make([]pharox.AcquireRequest, n)
	for i := range short {
		short[i] = pharox.AcquireRequest{PoolName: "cleanup", ConsumerID: c.ID, ConsumerName: c.Name, Duration: 300 * time.Millisecond, Strategy: pharox.FirstAvailable}
	}
	// Concurrent, so that they batch.
	var wg sync.WaitGroup
	var failed atomic.Value
	var next atomic.Int64
	for range 8 {
		wg.Go(func() {
			for i := next.Add(1); i <= n; i = next.Add(1) {
				if _, err := s.AcquireLease(ctx, short[i-1]); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	var expired bool
	for !expired {
		time.Sleep(50 * time.Millisecond)
		if err := s.pool.QueryRow(ctx, s.q(`SELECT bool_and(expires_at <= clock_timestamp()) FROM {s}.leases WHERE status = 'active'`)).Scan(&expired); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.CleanupExpiredLeases(ctx)
		done <- err
	}()
	for g := range 8 {
		wg.Go(func() {
			for range 10 {
				if _, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "cleanup", ConsumerID: c.ID, Duration: time.Minute,
					Strategy: pharox.AllStrategies[g%4]}); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("acquisition during cleanup: %v", err)
	}
}
