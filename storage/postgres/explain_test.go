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
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
)

// TestExplainAcquire prints the plans of the acquisition statements on a
// 20,000-proxy pool (run with -v; PHAROX_EXPLAIN_ANALYZE=1 executes it inside
// a rolled-back transaction). It asserts that every strategy, with and
// without a filter and a target, alone and batched, walks its
// proxies_free_* index and never scans or sorts the pool's proxies; with
// a target (half the pool cools down for it, every second proxy in id
// order), that each proxy the walk reaches is probed in proxy_targets by
// primary key, never found by a scan or a join over the target's
// entries.
func TestExplainAcquire(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	_, c := seedPool(t, s, "explain", 20000, 1)
	// Some busy proxies, as under load: the walk skips them.
	for range 20 {
		if _, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "explain", ConsumerID: c.ID,
			Duration: time.Minute, Strategy: pharox.FirstAvailable}); err != nil {
			t.Fatal(err)
		}
	}
	// Every second proxy in id order cools down for the target.
	if _, err := s.pool.Exec(ctx, s.q(`INSERT INTO {s}.proxy_targets (proxy_id, target, bans, cooling_until, banned_at, updated_at)
		SELECT id, 'example.com', 1, now() + interval '1 hour', now(), now()
		FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM {s}.proxies) x WHERE n % 2 = 0`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE "+s.schema+".proxy_targets"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		st     pharox.Strategy
		f      *pharox.Filters
		target string
	}{
		{pharox.FirstAvailable, nil, ""},
		{pharox.FirstAvailable, &pharox.Filters{Country: "DE"}, ""},
		{pharox.FirstAvailable, &pharox.Filters{Latitude: ptrutil.Ptr(52.52), Longitude: ptrutil.Ptr(13.40), RadiusKM: ptrutil.Ptr(500.0)}, ""},
		{pharox.LeastUsed, nil, ""},
		{pharox.LeastUsed, &pharox.Filters{Country: "DE"}, ""},
		{pharox.RoundRobin, nil, ""},
		{pharox.RoundRobin, &pharox.Filters{Country: "DE"}, ""},
		{pharox.Random, nil, ""},
		{pharox.Random, &pharox.Filters{Tags: []string{"x"}}, ""},
		{pharox.FirstAvailable, nil, "example.com"},
		{pharox.FirstAvailable, &pharox.Filters{Country: "DE"}, "example.com"},
		{pharox.LeastUsed, nil, "example.com"},
		{pharox.RoundRobin, nil, "example.com"},
		{pharox.RoundRobin, &pharox.Filters{Country: "DE"}, "example.com"},
		{pharox.Random, nil, "example.com"},
	}
	type explained struct {
		name   string
		sql    string
		vals   []any
		index  string // the proxies_free_* index the plan must use
		target bool   // the plan must probe proxy_targets by primary key
	}
	var stmts []explained
	for _, tc := range cases {
		a := &args{}
		a.add("explain")
		a.add(c.ID)
		a.add(uuid.New())
		a.add(c.Name)
		a.add(time.Minute)
		a.add("")
		sqls := s.acquireStatements(tc.st, false, false, false, tc.target, tc.f, a)
		name := fmt.Sprintf("%s %+v", tc.st, tc.f)
		if tc.target != "" {
			name += " target " + tc.target
		}
		stmts = append(stmts, explained{name, sqls.lean, a.vals, freeIndex[tc.st], tc.target != ""},
			explained{name + ", full form", sqls.full, a.vals, freeIndex[tc.st], tc.target != ""})
	}
	// Sticky, with a target: the bound proxy and the walk are probed.
	{
		a := &args{}
		for _, v := range []any{"explain", c.ID, uuid.New(), c.Name, time.Minute, "session-1", time.Hour} {
			a.add(v)
		}
		sqls := s.acquireStatements(pharox.FirstAvailable, true, false, false, "example.com", nil, a)
		stmts = append(stmts, explained{"sticky, target example.com", sqls.lean, a.vals, freeIndex[pharox.FirstAvailable], true})
	}
	// A batch of 16 acquisitions, as concurrent callers share it.
	const n = 16
	// (ids as text: the simple protocol EXPLAIN EXECUTE uses has no uuid[]
	// encoding; the statement casts them.)
	leaseIDs, consumerIDs, names, micros := make([]string, n), make([]string, n), make([]string, n), make([]int64, n)
	for i := range n {
		leaseIDs[i], consumerIDs[i], names[i], micros[i] = uuid.NewString(), c.ID.String(), c.Name, time.Minute.Microseconds()
	}
	batchVals := []any{"explain", leaseIDs, consumerIDs, names, micros}
	for _, st := range pharox.AllStrategies {
		stmts = append(stmts, explained{"batch of 16, " + string(st),
			s.acquireBatchSQL(acquireBatchKey{pool: "explain", strategy: st}, "true"), batchVals, freeIndex[st], false},
			explained{"batch of 16, target example.com, " + string(st),
				s.acquireBatchSQL(acquireBatchKey{pool: "explain", strategy: st, target: "example.com"}, "true"),
				append(batchVals[:len(batchVals):len(batchVals)], "example.com"), freeIndex[st], true})
	}

	// And the release of 16 leases.
	held, err := s.ListLeases(ctx, pharox.LeaseQuery{Status: pharox.LeaseActive, Limit: n})
	if err != nil {
		t.Fatal(err)
	}
	heldIDs := make([]string, len(held))
	for i, l := range held {
		heldIDs[i] = l.ID.String()
	}
	stmts = append(stmts, explained{"batch release of 16", s.q(releaseBatchSQL), []any{heldIDs, "off"}, "", false})

	for _, st := range stmts {
		sql := st.sql
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
			rows, err := tx.Query(ctx, "EXPLAIN ("+opts+") EXECUTE acq("+placeholdersFor(st.vals)+")", append([]any{pgx.QueryExecModeSimpleProtocol}, st.vals...)...)
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
			t.Fatalf("%s: explain: %v", st.name, err)
		}
		text := strings.Join(plan, "\n")
		t.Logf("%s:\n%s\n%s", st.name, sql, text)
		if st.index != "" && !strings.Contains(text, "using "+st.index+" on proxies") {
			t.Errorf("%s: plan does not walk %s:\n%s", st.name, st.index, text)
		}
		if strings.Contains(text, "Seq Scan on proxies") {
			t.Errorf("%s: plan scans the proxies table:\n%s", st.name, text)
		}
		if st.target {
			if !strings.Contains(text, "using proxy_targets_pkey on proxy_targets") {
				t.Errorf("%s: plan does not probe proxy_targets by primary key:\n%s", st.name, text)
			}
			for _, bad := range []string{"Seq Scan on proxy_targets", "Anti Join", "Bitmap Heap Scan on proxy_targets", "proxy_targets_cooling"} {
				if strings.Contains(text, bad) {
					t.Errorf("%s: plan has %q: it reads the target's entries rather than probing each candidate:\n%s", st.name, bad, text)
				}
			}
		}
	}
}

// freeIndex is the partial index each strategy walks.
var freeIndex = map[pharox.Strategy]string{
	pharox.FirstAvailable: "proxies_free_first",
	pharox.LeastUsed:      "proxies_free_least",
	pharox.RoundRobin:     "proxies_free_id",
	pharox.Random:         "proxies_free_random",
}

func placeholdersFor(vals []any) string {
	ph := make([]string, len(vals))
	for i := range vals {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	return strings.Join(ph, ", ")
}

// seedPool creates a pool of n proxies with max concurrency maxc, spread
// over four countries and the globe, and a consumer, then runs ANALYZE so
// the planner sees the pool's real size.
func seedPool(t testing.TB, s *Store, name string, n, maxc int) (*pharox.Pool, *pharox.Consumer) {
	t.Helper()
	ctx := t.Context()
	pool := testfactory.Pool(ctx, t, s, &testfactory.PoolOpts{Name: &name})
	c := testfactory.Consumer(ctx, t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("seed")})
	testfactory.ProxiesFunc(ctx, t, s, pool.ID, n, func(i int) *testfactory.ProxyOpts {
		return &testfactory.ProxyOpts{MaxConcurrency: &maxc, Country: ptrutil.Ptr([]string{"US", "DE", "BR", "JP"}[i%4]),
			Latitude: ptrutil.Ptr(float64(i%120) - 60), Longitude: ptrutil.Ptr(float64(i*7%360) - 180)}
	})
	if _, err := s.pool.Exec(ctx, "ANALYZE "+s.schema+".proxies"); err != nil {
		t.Fatal(err)
	}
	return pool, c
}
