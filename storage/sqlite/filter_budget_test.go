package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/storage/sqlite"
)

// TestFilterScanBudget: a filter that rejects every proxy with a free slot
// gives up after the budget with ErrNoProxyAvailable saying it is too
// selective, under every strategy, instead of walking the whole pool under
// the write lock. Within the budget the answer is exact: the one proxy the
// filter accepts, or a plain "none available".
func TestFilterScanBudget(t *testing.T) {
	ctx := context.Background()
	const n = 200
	for _, budget := range []int{50, 2 * n} {
		s := open(t, sqlite.WithFilterScanBudget(budget))
		pool, err := s.CreatePool(ctx, pharox.Pool{Name: "budget"})
		if err != nil {
			t.Fatal(err)
		}
		in := make([]pharox.Proxy, n)
		for i := range in {
			in[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.2.%d.%d", i/250, i%250+1), Port: 9000 + i,
				Protocol: pharox.ProtocolHTTP, Country: "US"}
		}
		in[n/2].Country = "LU"
		if _, err := s.AddProxies(ctx, in); err != nil {
			t.Fatal(err)
		}
		c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("budget")})
		for _, st := range pharox.AllStrategies {
			r := req("budget", c)
			r.Strategy = st
			// Match decides AnyOf: SQL cannot narrow the walk.
			r.Filters = &pharox.Filters{AnyOf: []pharox.Filters{{Country: "FR"}, {Country: "DE"}}}
			_, err := s.AcquireLease(ctx, r)
			if !errors.Is(err, pharox.ErrNoProxyAvailable) {
				t.Fatalf("budget %d, %s, a filter nothing matches: %v, want ErrNoProxyAvailable", budget, st, err)
			}
			if tooSelective := strings.Contains(err.Error(), "too selective"); tooSelective != (budget < n) {
				t.Fatalf("budget %d over %d free proxies, %s: error %q", budget, n, st, err)
			}
			if budget < n {
				continue
			}
			r.Filters = &pharox.Filters{AnyOf: []pharox.Filters{{Country: "LU"}, {Country: "DE"}}}
			l, err := s.AcquireLease(ctx, r)
			if err != nil || l.Proxy.Country != "LU" {
				t.Fatalf("budget %d, %s, a filter one proxy matches: %v, %v", budget, st, l, err)
			}
			if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
}
