package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
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
			MaxConcurrency: ptr(1), Country: "US"}
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
