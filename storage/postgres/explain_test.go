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
// entries. The leases table holds 20,000 ended leases and the quotas
// table 2,000 quotas of other consumers: every statement probes quotas by
// primary key and reads no lease but by an index. With quotas on the
// consumer and the pool, the quota statements count the active leases
// through leases_active_consumer and leases_active_pool.
func TestExplainAcquire(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, c := seedPool(t, s, "explain", 20000, 1)
	// Some busy proxies, as under load: the walk skips them.
	for range 20 {
		if _, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "explain", ConsumerID: c.ID,
			Duration: time.Minute, Strategy: pharox.FirstAvailable}); err != nil {
			t.Fatal(err)
		}
	}
	seedHistory(t, s, pool.ID)
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
	// The quota statements, with quotas on the consumer and the pool.
	for _, q := range []pharox.Quota{
		{Subject: pharox.QuotaConsumer, SubjectID: c.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1000, RequestsPerMinute: 100000}},
		{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 100000, BytesPerDay: 1 << 40}},
	} {
		if _, err := s.SetQuota(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	var quotaStmts []explained
	for _, tc := range []struct {
		st     pharox.Strategy
		f      *pharox.Filters
		target string
	}{
		{pharox.FirstAvailable, nil, ""},
		{pharox.LeastUsed, &pharox.Filters{Country: "DE"}, ""},
		{pharox.RoundRobin, nil, "example.com"},
		{pharox.Random, nil, ""},
	} {
		a := &args{}
		for _, v := range []any{"explain", c.ID, uuid.New(), c.Name, time.Minute, ""} {
			a.add(v)
		}
		sqls := s.acquireStatements(tc.st, false, false, true, tc.target, tc.f, a)
		name := fmt.Sprintf("quotas, %s %+v", tc.st, tc.f)
		if tc.target != "" {
			name += " target " + tc.target
		}
		quotaStmts = append(quotaStmts, explained{name, sqls.lean, a.vals, freeIndex[tc.st], tc.target != ""},
			explained{name + ", full form", sqls.full, a.vals, freeIndex[tc.st], tc.target != ""})
	}
	{
		a := &args{}
		for _, v := range []any{"explain", c.ID, uuid.New(), c.Name, time.Minute, "session-1", time.Hour} {
			a.add(v)
		}
		sqls := s.acquireStatements(pharox.FirstAvailable, true, true, true, "", nil, a)
		quotaStmts = append(quotaStmts, explained{"quotas, sticky, lease id", sqls.lean, a.vals, freeIndex[pharox.FirstAvailable], false})
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
	for _, st := range pharox.AllStrategies {
		quotaStmts = append(quotaStmts, explained{"quotas, batch of 16, " + string(st),
			s.acquireBatchSQL(acquireBatchKey{pool: "explain", strategy: st, quota: true}, "true"), batchVals, freeIndex[st], false})
	}
	quotaStmts = append(quotaStmts,
		explained{"quota lock", s.q(quotaLockSQL), []any{c.ID, "explain"}, "", false},
		explained{"quota lock of a batch", s.q(quotaBatchLockSQL), []any{[]string{c.ID.String(), uuid.NewString()}, "explain"}, "", false})
	for _, st := range quotaStmts {
		text := explainPlan(t, s, st.name, st.sql, st.vals)
		if st.index != "" && !strings.Contains(text, "using "+st.index+" on proxies") {
			t.Errorf("%s: plan does not walk %s:\n%s", st.name, st.index, text)
		}
		noSeqScans(t, st.name, text)
		if st.target && !strings.Contains(text, "using proxy_targets_pkey on proxy_targets") {
			t.Errorf("%s: plan does not probe proxy_targets by primary key:\n%s", st.name, text)
		}
		quotasByKey(t, st.name, text)
		if st.index != "" {
			for _, idx := range []string{"leases_active_consumer", "leases_active_pool"} {
				if !strings.Contains(text, "using "+idx+" on leases") {
					t.Errorf("%s: plan does not count active leases through %s:\n%s", st.name, idx, text)
				}
			}
		}
	}

	for _, st := range stmts {
		text := explainPlan(t, s, st.name, st.sql, st.vals)
		if st.index != "" && !strings.Contains(text, "using "+st.index+" on proxies") {
			t.Errorf("%s: plan does not walk %s:\n%s", st.name, st.index, text)
		}
		noSeqScans(t, st.name, text)
		if strings.HasPrefix(st.sql, "WITH") && !strings.Contains(st.name, "release") {
			// The probe for quotas of the consumer and the pool.
			quotasByKey(t, st.name, text)
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

// explainPlan returns the generic plan of sql with vals (see
// TestExplainAcquire) and logs it with the statement.
func explainPlan(t *testing.T, s *Store, name, sql string, vals []any) string {
	t.Helper()
	ctx := context.Background()
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
		rows, err := tx.Query(ctx, "EXPLAIN ("+opts+") EXECUTE acq("+placeholdersFor(vals)+")", append([]any{pgx.QueryExecModeSimpleProtocol}, vals...)...)
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
		t.Fatalf("%s: explain: %v", name, err)
	}
	text := strings.Join(plan, "\n")
	t.Logf("%s:\n%s\n%s", name, sql, text)
	return text
}

// quotasByKey fails t unless the plan reads quotas by primary key only.
func quotasByKey(t *testing.T, name, plan string) {
	t.Helper()
	if !strings.Contains(plan, "quotas_pkey") {
		t.Errorf("%s: plan does not look quotas up by primary key:\n%s", name, plan)
	}
	if strings.Contains(plan, "Seq Scan on quotas") {
		t.Errorf("%s: plan scans the quotas table:\n%s", name, plan)
	}
}

// seedHistory fills the leases table with 20,000 ended leases of pool's
// proxies and of 49 other pools and 5,000 active ones of those other
// pools, and the quotas table with 2,000 quotas, all of other consumers,
// and analyses both, as in a busy store that has run for a while.
func seedHistory(t testing.TB, s *Store, pool uuid.UUID) {
	t.Helper()
	ctx := t.Context()
	for i, sql := range []string{
		`INSERT INTO {s}.leases (id, proxy_id, pool_id, pool_name, consumer_id, consumer_name, status, acquired_at, expires_at, released_at)
		SELECT gen_random_uuid(), p.id, CASE WHEN g % 50 = 0 THEN p.pool_id ELSE ('00000000-0000-0000-0000-0000000000' || lpad((g % 50)::text, 2, '0'))::uuid END,
			'old', gen_random_uuid(), 'old', 'released', now() - interval '2 hours', now() - interval '1 hour', now() - interval '90 minutes'
		FROM {s}.proxies p, generate_series(1, 20000 / greatest((SELECT count(*) FROM {s}.proxies WHERE pool_id = $1), 1)) g WHERE p.pool_id = $1`,
		`INSERT INTO {s}.leases (id, proxy_id, pool_id, pool_name, consumer_id, consumer_name, status, acquired_at, expires_at)
		SELECT gen_random_uuid(), gen_random_uuid(), ('00000000-0000-0000-0000-0000000000' || lpad((1 + g % 49)::text, 2, '0'))::uuid,
			'other', gen_random_uuid(), 'other', 'active', now(), now() + interval '1 hour'
		FROM generate_series(1, 5000) g`,
		`INSERT INTO {s}.quotas (subject, subject_id, max_concurrent_leases, day, month, updated_at)
		SELECT 'consumer', gen_random_uuid(), 5, date_trunc('day', now(), 'UTC'), date_trunc('month', now(), 'UTC'), now()
		FROM generate_series(1, 2000)`,
	} {
		var args []any
		if i == 0 {
			args = []any{pool}
		}
		if _, err := s.pool.Exec(ctx, s.q(sql), args...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE "+s.schema+".leases, "+s.schema+".quotas"); err != nil {
		t.Fatal(err)
	}
}

// explainCustom returns the plan sql gets for its values vals, as a
// statement planned on each call (QueryExecModeExec) runs it, and logs it.
func explainCustom(t *testing.T, s *Store, name, sql string, vals []any) string {
	t.Helper()
	ctx := context.Background()
	opts := "COSTS OFF"
	if os.Getenv("PHAROX_EXPLAIN_ANALYZE") != "" {
		opts = "ANALYZE, BUFFERS, COSTS OFF, TIMING OFF"
	}
	var plan []string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, "EXPLAIN ("+opts+") "+sql, append([]any{pgx.QueryExecModeExec}, vals...)...)
		if err != nil {
			return err
		}
		plan, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		return errRollback
	})
	if err != nil && err != errRollback {
		t.Fatalf("%s: explain: %v", name, err)
	}
	text := strings.Join(plan, "\n")
	t.Logf("%s (planned for its values):\n%s\n%s", name, sql, text)
	return text
}

// noSeqScans fails t when the plan scans the proxies or leases table.
func noSeqScans(t *testing.T, name, plan string) {
	t.Helper()
	for _, table := range []string{"proxies", "leases"} {
		if strings.Contains(plan, "Seq Scan on "+table) {
			t.Errorf("%s: plan scans the %s table:\n%s", name, table, plan)
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

// TestExplainUsage prints the plans of the statements that count and read
// usage (run with -v) on a 2,000-proxy pool with the history of
// seedHistory, 60,000 hourly buckets of 30 days and quotas on the
// consumer, the pool and a proxy, and asserts that
// releases with usage reach every lease, proxy and quota row by an index,
// and that usage queries read the buckets through the index of their
// filter: the primary key (hour_start first) for a range of hours,
// usage_hourly_pool, usage_hourly_consumer or usage_hourly_proxy for one
// subject.
func TestExplainUsage(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, c := seedPool(t, s, "explain-usage", 2000, 1)
	var held []string
	var proxy uuid.UUID
	for range 16 {
		l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: pool.Name, ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l.ID.String())
		proxy = l.ProxyID
	}
	seedHistory(t, s, pool.ID)
	// Buckets of 500 consumers (c's among them) and 50 pools (pool's).
	if _, err := s.pool.Exec(ctx, s.q(`INSERT INTO {s}.usage_hourly (hour_start, consumer_id, proxy_id, pool_id, target, leases, requests, bytes_sent, bytes_received)
		SELECT date_trunc('hour', now()) - (g % 720) * interval '1 hour',
			CASE WHEN g % 500 = 0 THEN $1 ELSE ('00000000-0000-0000-0000-' || lpad((g % 500)::text, 12, '0'))::uuid END,
			gen_random_uuid(), CASE WHEN g % 50 = 0 THEN $2 ELSE ('00000000-0000-0000-0000-0000000000' || lpad((g % 50)::text, 2, '0'))::uuid END,
			'site' || (g % 300), 1, 2, 3, 4
		FROM generate_series(1, 60000) g`), c.ID, pool.ID); err != nil {
		t.Fatal(err)
	}
	// Quotas on c, the pool and the last lease's proxy: the release of that
	// lease counts in all three.
	for _, q := range []pharox.Quota{
		{Subject: pharox.QuotaConsumer, SubjectID: c.ID, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1 << 30}},
		{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: pharox.QuotaLimits{BytesPerMonth: 1 << 40}},
		{Subject: pharox.QuotaProxy, SubjectID: proxy, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1 << 30}},
	} {
		if _, err := s.SetQuota(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE "+s.schema+".usage_hourly"); err != nil {
		t.Fatal(err)
	}
	day := time.Now().UTC().Add(-24 * time.Hour)
	type explained struct {
		name  string
		sql   string
		vals  []any
		index string // an index the plan must use
		// custom: the statement is planned for its values on each call
		// (QueryExecModeExec), so explain that plan.
		custom bool
	}
	stmts := []explained{
		{name: "release with usage", sql: s.q(releaseUsageSQL), vals: []any{held[len(held)-1], "off", int64(1), int64(2), int64(3)}, index: "leases_pkey"},
		{name: "batch release of 16 with usage", sql: s.q(releaseBatchUsageSQL), vals: []any{held, "off", make([]int64, 16), make([]int64, 16), make([]int64, 16)}, index: "leases_pkey", custom: true},
		{name: "new quota's counters, consumer", sql: s.q(`SELECT coalesce(sum(bytes_sent + bytes_received) FILTER (WHERE hour_start >= $3), 0)::bigint,
	coalesce(sum(bytes_sent + bytes_received), 0)::bigint
FROM {s}.usage_hourly WHERE consumer_id = $1 AND hour_start >= $2`), vals: []any{c.ID, pharox.MonthStart(day), pharox.DayStart(day)}, index: "usage_hourly_consumer"},
		{name: "new quota's counters, proxy", sql: s.q(`SELECT coalesce(sum(bytes_sent + bytes_received) FILTER (WHERE hour_start >= $3), 0)::bigint,
	coalesce(sum(bytes_sent + bytes_received), 0)::bigint
FROM {s}.usage_hourly WHERE proxy_id = $1 AND hour_start >= $2`), vals: []any{uuid.New(), pharox.MonthStart(day), pharox.DayStart(day)}, index: "usage_hourly_proxy"},
		{name: "quotas of a pool being deleted", sql: s.q(`SELECT 1 FROM {s}.quotas q WHERE ` + poolQuotasSQL + ` ORDER BY q.subject, q.subject_id FOR UPDATE OF q`), vals: []any{pool.ID}, index: "quotas_pkey"},
		{name: "purge usage", sql: s.q(`DELETE FROM {s}.usage_hourly WHERE hour_start < $1`), vals: []any{day.Add(-29 * 24 * time.Hour)}, index: "usage_hourly_pkey", custom: true},
	}
	for _, g := range []pharox.UsageGroup{pharox.UsageByConsumer, pharox.UsageByProxy, pharox.UsageByPool, pharox.UsageByTarget} {
		for _, q := range []struct {
			name  string
			q     pharox.UsageQuery
			index string
		}{
			{"last day", pharox.UsageQuery{Since: day}, "usage_hourly_pkey"},
			{"pool", pharox.UsageQuery{PoolID: pool.ID}, "usage_hourly_pool"},
			{"consumer, last day", pharox.UsageQuery{ConsumerID: c.ID, Since: day, Until: day.Add(time.Hour)}, "usage_hourly_consumer"},
		} {
			q.q.GroupBy = g
			sql, vals := s.usageQuerySQL(q.q)
			stmts = append(stmts, explained{name: fmt.Sprintf("usage by %s, %s", g, q.name), sql: s.q(sql), vals: vals, index: q.index, custom: true})
		}
	}
	for _, st := range stmts {
		var text string
		if st.custom {
			text = explainCustom(t, s, st.name, st.sql, st.vals)
		} else {
			text = explainPlan(t, s, st.name, st.sql, st.vals)
		}
		noSeqScans(t, st.name, text)
		for _, bad := range []string{"Seq Scan on quotas", "Seq Scan on usage_hourly"} {
			if strings.Contains(text, bad) {
				t.Errorf("%s: plan has %q:\n%s", st.name, bad, text)
			}
		}
		if !strings.Contains(text, st.index) {
			t.Errorf("%s: plan does not use %s:\n%s", st.name, st.index, text)
		}
	}
}
