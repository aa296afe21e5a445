package postgres

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pharox/pharox"
)

// TestExplainAcquire prints the plan of the hot acquisition statement on a
// 1,000-proxy pool (run with -v; PHAROX_EXPLAIN_ANALYZE=1 executes it inside
// a rolled-back transaction). It asserts only that the plan walks an index
// rather than the whole table for the default strategy.
func TestExplainAcquire(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	_, c := seedPool(t, s, "explain", 1000, 1)
	// Some busy proxies, as under load: the walk skips them.
	for range 20 {
		if _, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "explain", ConsumerID: c.ID,
			Duration: time.Minute, Strategy: pharox.FirstAvailable}); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		st pharox.Strategy
		f  *pharox.Filters
	}{
		{pharox.FirstAvailable, nil},
		{pharox.FirstAvailable, &pharox.Filters{Country: "DE"}},
		{pharox.FirstAvailable, &pharox.Filters{Latitude: ptr(52.52), Longitude: ptr(13.40), RadiusKM: ptr(500.0)}},
		{pharox.LeastUsed, nil},
		{pharox.RoundRobin, nil},
		{pharox.Random, nil},
	}
	for _, tc := range cases {
		st := tc.st
		a := &args{}
		a.add("explain")
		a.add(c.ID)
		a.add(uuid.New())
		a.add(c.Name)
		a.add(time.Minute)
		a.add("")
		sql := s.acquireStatements(st, false, tc.f, a).lean
		opts := "COSTS OFF"
		if os.Getenv("PHAROX_EXPLAIN_ANALYZE") != "" {
			opts = "ANALYZE, BUFFERS, COSTS OFF, TIMING OFF"
		}
		var plan []string
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			// Prepared statements switch to a generic plan; show that one.
			if _, err := tx.Exec(ctx, "SET LOCAL plan_cache_mode = force_generic_plan"); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "PREPARE acq AS "+sql); err != nil {
				return err
			}
			rows, err := tx.Query(ctx, "EXPLAIN ("+opts+") EXECUTE acq("+placeholdersFor(a.vals)+")", append([]any{pgx.QueryExecModeSimpleProtocol}, a.vals...)...)
			if err != nil {
				return err
			}
			plan, err = pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			_, _ = tx.Exec(ctx, "DEALLOCATE acq")
			return errRollback
		})
		if err != nil && err != errRollback {
			t.Fatalf("%s: explain: %v", st, err)
		}
		text := strings.Join(plan, "\n")
		t.Logf("%s %+v:\n%s\n%s", st, tc.f, sql, text)
		if st == pharox.FirstAvailable && tc.f == nil && !strings.Contains(text, "proxies_leasable") {
			t.Errorf("first_available plan does not use proxies_leasable:\n%s", text)
		}
	}
}

func placeholdersFor(vals []any) string {
	ph := make([]string, len(vals))
	for i := range vals {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	return strings.Join(ph, ", ")
}

// seedPool creates a pool of n proxies with max concurrency maxc and a
// consumer.
func seedPool(t testing.TB, s *Store, name string, n, maxc int) (*pharox.Pool, *pharox.Consumer) {
	t.Helper()
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "seed")
	if err != nil {
		t.Fatal(err)
	}
	in := make([]pharox.Proxy, n)
	for i := range in {
		m := maxc
		in[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), Port: 3128,
			Protocol: pharox.ProtocolHTTP, MaxConcurrency: &m, Country: []string{"US", "DE", "BR", "JP"}[i%4],
			Latitude: ptr(float64(i%120) - 60), Longitude: ptr(float64(i*7%360) - 180)}
	}
	if _, err := s.AddProxies(ctx, in); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE "+s.schema+".proxies"); err != nil {
		t.Fatal(err)
	}
	return pool, c
}
