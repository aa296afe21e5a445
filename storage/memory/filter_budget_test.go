package memory_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/storage/memory"
)

// TestFilterScanBudget: a filter that rejects every candidate gives up
// after the budget with ErrNoProxyAvailable saying it is too selective,
// under every strategy, instead of testing the whole pool under the
// store's lock. Within the budget the answer is exact: the one proxy the
// filter accepts, or a plain "none available".
func TestFilterScanBudget(t *testing.T) {
	ctx := context.Background()
	const n = 200
	for _, budget := range []int{50, 2 * n} {
		s := testfactory.Memory(t, memory.WithFilterScanBudget(budget))
		pool, err := s.CreatePool(ctx, pharox.Pool{Name: "budget"})
		if err != nil {
			t.Fatal(err)
		}
		in := make([]pharox.Proxy, n)
		for i := range in {
			in[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.2.%d.%d", i/250, i%250+1), Port: 9000 + i,
				Protocol: pharox.ProtocolHTTP, Country: "US", MaxConcurrency: ptrutil.Ptr(1)}
		}
		in[n/2].Source = "needle"
		if _, err := s.AddProxies(ctx, in); err != nil {
			t.Fatal(err)
		}
		c, err := s.EnsureConsumer(ctx, "budget")
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range pharox.AllStrategies {
			for _, nothing := range []*pharox.Filters{
				{Source: "none"},
				{Country: "US", Tags: []string{"none"}}, // the country index holds all n
				{AnyOf: []pharox.Filters{{City: "x"}, {ISP: "y"}}},
			} {
				r := pharox.AcquireRequest{PoolName: "budget", ConsumerID: c.ID, Duration: time.Minute, Strategy: st, Filters: nothing}
				_, err := s.AcquireLease(ctx, r)
				if !errors.Is(err, pharox.ErrNoProxyAvailable) {
					t.Fatalf("budget %d, %s, filter %+v: %v, want ErrNoProxyAvailable", budget, st, nothing, err)
				}
				if tooSelective := strings.Contains(err.Error(), "too selective"); tooSelective != (budget < n) {
					t.Fatalf("budget %d over %d candidates, %s, filter %+v: error %q", budget, n, st, nothing, err)
				}
				_, err = s.FindAvailableProxy(ctx, "budget", nothing, st)
				if !errors.Is(err, pharox.ErrNoProxyAvailable) || strings.Contains(err.Error(), "too selective") != (budget < n) {
					t.Fatalf("FindAvailableProxy, budget %d, %s, filter %+v: %v", budget, st, nothing, err)
				}
			}
			if budget < n {
				continue
			}
			r := pharox.AcquireRequest{PoolName: "budget", ConsumerID: c.ID, Duration: time.Minute, Strategy: st,
				Filters: &pharox.Filters{Source: "needle"}}
			l, err := s.AcquireLease(ctx, r)
			if err != nil || l.Proxy.Source != "needle" {
				t.Fatalf("budget %d, %s, a filter one proxy matches: %v, %v", budget, st, l, err)
			}
			if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
	}
}
