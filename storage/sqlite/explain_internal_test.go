package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// explain returns the EXPLAIN QUERY PLAN lines of query.
func explain(t *testing.T, s *Store, query string, args ...any) []string {
	t.Helper()
	rows, err := s.w.QueryContext(context.Background(), `EXPLAIN QUERY PLAN `+query, args...)
	if err != nil {
		t.Fatalf("EXPLAIN QUERY PLAN %s: %v", query, err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// wantPlan checks that a plan searches (not scans) an index by its
// leading columns, search being the index with its constraints, and
// neither scans a table nor sorts: the cost of such a query does not grow
// with the table.
func wantPlan(t *testing.T, what string, plan []string, search string) {
	t.Helper()
	joined := strings.Join(plan, "\n")
	if !slices.ContainsFunc(plan, func(l string) bool { return strings.HasPrefix(l, "SEARCH ") && strings.Contains(l, search) }) {
		t.Errorf("%s: plan does not search %s:\n%s", what, search, joined)
	}
	for _, bad := range []string{"SCAN proxies", "SCAN leases", "SCAN l ", "TEMP B-TREE"} {
		if strings.Contains(joined+" ", bad) {
			t.Errorf("%s: plan has %q:\n%s", what, bad, joined)
		}
	}
}

// TestAcquisitionPlans pins every strategy's walk, filtered or not, to a
// search of its partial index of proxies with a free slot, and expiry
// reclaims to the index of active leases by pool: none of them walks busy
// proxies, ended leases or other pools' leases.
func TestAcquisitionPlans(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "plan.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pool := idArg(uuid.New())
	filters := &pharox.Filters{Country: "AR", Tags: []string{"res"}, AnyOf: []pharox.Filters{{City: "x"}, {Source: "y"}}}
	for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed, pharox.RoundRobin} {
		for _, rrLast := range []string{"", uuid.New().String()} {
			for _, w := range strategyWalks(st, rrLast) {
				search := "USING INDEX " + w.index + " (pool_id=?"
				args := append([]any{pool}, w.args...)
				wantPlan(t, string(st)+" unfiltered", explain(t, s, walkSQL(w, sqlFilter{}, false), args...), search)
				pre := prefilter(filters)
				fargs := append(append(append([]any{}, args...), 100), pre.args...)
				wantPlan(t, string(st)+" filtered", explain(t, s, walkSQL(w, pre, true), fargs...), search)
			}
		}
	}
	wantPlan(t, "random count", explain(t, s, randomCountSQL, pool), "PRIMARY KEY (pool_id=?)")
	wantPlan(t, "random draw", explain(t, s, randomProbeSQL, pool, 3), "PRIMARY KEY (pool_id=? AND pos=?)")
	pre := prefilter(filters)
	batch := randomAllSQL + ` AND s.pos IN (?, ?, ?)` + pre.where
	wantPlan(t, "random filtered draw", explain(t, s, batch, append([]any{pool, 1, 2, 3}, pre.args...)...), "PRIMARY KEY (pool_id=? AND pos=?)")
	wantPlan(t, "reclaim a pool", explain(t, s, reclaimPoolSQL, pool, 1), "leases_active_pool (pool_id=? AND expires_at<?)")
	wantPlan(t, "reclaim a proxy", explain(t, s, reclaimProxySQL, pool, 1), "leases_active_pool (pool_id=? AND expires_at<?)")
	wantPlan(t, "reclaim a batch", explain(t, s, reclaimBatchSQL, 1, 10), "leases_active_pool (pool_id=? AND expires_at<?)")
	wantPlan(t, "reclaim due", explain(t, s, reclaimDueSQL, 1), "leases_active_pool (pool_id=? AND expires_at<?)")
}

// TestTargetPlans pins acquisition with a target to the same index walks,
// with one primary-key lookup of proxy_targets per candidate, and the
// statements of ApplyTargetOutcome and the purge to index searches.
func TestTargetPlans(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "plan.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pool, proxy := idArg(uuid.New()), idArg(uuid.New())
	const lookup = "proxy_targets"
	noScan := func(what string, plan []string) {
		t.Helper()
		joined := strings.Join(plan, "\n")
		for _, bad := range []string{"SCAN t\n", "SCAN proxy_targets", "SCAN t "} {
			if strings.Contains(joined+"\n", bad) {
				t.Errorf("%s: plan scans proxy_targets:\n%s", what, joined)
			}
		}
		if !strings.Contains(joined, "SEARCH t USING PRIMARY KEY (proxy_id=? AND target=?)") &&
			!strings.Contains(joined, "SEARCH "+lookup+" USING PRIMARY KEY (proxy_id=? AND target=?)") {
			t.Errorf("%s: plan does not look proxy_targets up by primary key:\n%s", what, joined)
		}
	}
	for _, filters := range []*pharox.Filters{nil, {Country: "AR", Tags: []string{"res"}}} {
		for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed, pharox.RoundRobin} {
			for _, rrLast := range []string{"", uuid.New().String()} {
				for _, w := range strategyWalks(st, rrLast) {
					var pre sqlFilter
					if !filters.IsZero() {
						pre = prefilter(filters)
					}
					pre.where += notCoolingSQL
					pre.args = append(pre.args, "shop.example", 1)
					args := append(append(append([]any{pool}, w.args...), 100), pre.args...)
					plan := explain(t, s, walkSQL(w, pre, true), args...)
					wantPlan(t, string(st)+" with a target", plan, "USING INDEX "+w.index+" (pool_id=?")
					noScan(string(st)+" with a target", plan)
				}
			}
		}
		pre := sqlFilter{where: notCoolingSQL, args: []any{"shop.example", 1}}
		plan := explain(t, s, randomAllSQL+` AND s.pos IN (?, ?, ?)`+pre.where, append([]any{pool, 1, 2, 3}, pre.args...)...)
		wantPlan(t, "random with a target", plan, "PRIMARY KEY (pool_id=? AND pos=?)")
		noScan("random with a target", plan)
	}
	for name, q := range map[string]struct {
		sql    string
		args   []any
		search string
	}{
		"get":    {targetGetSQL, []any{proxy, "shop.example"}, "PRIMARY KEY (proxy_id=? AND target=?)"},
		"count":  {targetCountSQL, []any{proxy}, "PRIMARY KEY (proxy_id=?)"},
		"recent": {targetRecentSQL, []any{proxy, 1}, "PRIMARY KEY (proxy_id=?)"},
		"evict":  {targetEvictSQL, []any{proxy, proxy, 1}, "PRIMARY KEY (proxy_id=?"},
		"purge":  {targetPurgeSQL, []any{1, 10}, "proxy_targets_idle (idle_since<?)"},
	} {
		plan := explain(t, s, q.sql, q.args...)
		if !slices.ContainsFunc(plan, func(l string) bool { return strings.HasPrefix(l, "SEARCH ") && strings.Contains(l, q.search) }) {
			t.Errorf("%s: plan does not search %s:\n%s", name, q.search, strings.Join(plan, "\n"))
		}
		for _, l := range plan {
			if strings.HasPrefix(l, "SCAN ") {
				t.Errorf("%s: plan scans: %s", name, strings.Join(plan, "\n"))
			}
		}
	}
}

// TestUsagePlans pins the statements of quotas and usage to index
// searches: the acquisition's lookup probes primary keys and the partial
// index of proxies whose allowance is used up, a capped subject's count
// reads its partial index of active leases from now on, a release probes
// the quotas by primary key, and the sums, queries and purge of buckets
// search a range of one index. A walk that skips exhausted proxies is the
// strategy's walk of its partial index. Only the grouping of the buckets
// a query selected may sort.
func TestUsagePlans(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "plan.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id := idArg(uuid.New())
	searches := func(what string, plan []string, search ...string) {
		t.Helper()
		joined := strings.Join(plan, "\n")
		for _, want := range search {
			if !slices.ContainsFunc(plan, func(l string) bool { return strings.HasPrefix(l, "SEARCH ") && strings.Contains(l, want) }) {
				t.Errorf("%s: plan does not search %s:\n%s", what, want, joined)
			}
		}
		for _, l := range plan {
			// The acquisition's lookup reads its arguments as a one-row
			// co-routine, and the counts read their LIMITed subquery
			// (itself a search).
			if strings.HasPrefix(l, "SCAN ") && l != "SCAN CONSTANT ROW" && l != "SCAN arg" && !strings.HasPrefix(l, "SCAN (subquery-") {
				t.Errorf("%s: plan scans (%s):\n%s", what, l, joined)
			}
			if strings.Contains(l, "TEMP B-TREE") && !strings.Contains(l, "GROUP BY") {
				t.Errorf("%s: plan sorts (%s):\n%s", what, l, joined)
			}
		}
	}
	const quotaKey = "quotas USING PRIMARY KEY (subject=? AND subject_id=?)"
	for name, q := range map[string]struct {
		sql    string
		args   []any
		search []string
	}{
		"acquisition lookup": {acquireLookupSQL, []any{"p", id, 1}, []string{
			"sqlite_autoindex_pools_2 (name=?)", "sqlite_autoindex_consumers_1 (id=?)", quotaKey,
			"proxies_allowance (pool_id=? AND allowance_until>?)"}},
		"find lookup":      {findLookupSQL, []any{"p", 1}, []string{"proxies_allowance (pool_id=? AND allowance_until>?)"}},
		"admit a consumer": {admitConsumerSQL, []any{id, 1}, []string{quotaKey, "leases_capped_consumer (consumer_id=? AND expires_at>?)"}},
		"admit a pool":     {admitPoolSQL, []any{id, 1}, []string{quotaKey, "leases_active_pool (pool_id=? AND expires_at>?)"}},
		"get quota":        {quotaGetSQL, []any{"pool", id}, []string{quotaKey}},
		"release's quotas": {usageQuotasSQL, []any{id, id, id}, []string{quotaKey}},
		"take a token":     {quotaTokensSQL, []any{1, 1, "pool", id}, []string{quotaKey}},
		"add bytes":        {quotaBytesSQL, []any{1, 1, 1, 1, "pool", id}, []string{quotaKey}},
		"delete quota":     {quotaDeleteSQL, []any{"pool", id}, []string{quotaKey}},
		"set allowance":    {proxyAllowanceSQL, []any{1, id}, []string{"sqlite_autoindex_proxies_1 (id=?)"}},
		"consumer's sums":  {quotaSums(pharox.QuotaConsumer), []any{id, 1, 1}, []string{"usage_hourly_consumer (consumer_id=? AND hour_start>?)"}},
		"pool's sums":      {quotaSums(pharox.QuotaPool), []any{id, 1, 1}, []string{"usage_hourly_pool (pool_id=? AND hour_start>?)"}},
		"proxy's sums":     {quotaSums(pharox.QuotaProxy), []any{id, 1, 1}, []string{"usage_hourly_proxy (proxy_id=? AND hour_start>?)"}},
		"purge usage":      {usagePurgeSQL, []any{1, 10}, []string{"usage_hourly USING PRIMARY KEY (hour_start<?)"}},
	} {
		searches(name, explain(t, s, q.sql, q.args...), q.search...)
	}
	now := s.stamp()
	for _, q := range []struct {
		q      pharox.UsageQuery
		search string
	}{
		{pharox.UsageQuery{GroupBy: pharox.UsageByTarget, Since: now}, "usage_hourly USING PRIMARY KEY (hour_start>?)"},
		{pharox.UsageQuery{GroupBy: pharox.UsageByProxy, Since: now, Until: now.Add(time.Hour)}, "usage_hourly USING PRIMARY KEY (hour_start>? AND hour_start<?)"},
		{pharox.UsageQuery{GroupBy: pharox.UsageByConsumer, PoolID: uuid.New()}, "usage_hourly_pool (pool_id=?)"},
		{pharox.UsageQuery{GroupBy: pharox.UsageByPool, PoolID: uuid.New(), Since: now}, "usage_hourly_pool (pool_id=? AND hour_start>?)"},
		{pharox.UsageQuery{GroupBy: pharox.UsageByProxy, ConsumerID: uuid.New(), Until: now}, "usage_hourly_consumer (consumer_id=? AND hour_start<?)"},
		{pharox.UsageQuery{GroupBy: pharox.UsageByTarget, ConsumerID: uuid.New(), PoolID: uuid.New(), Since: now}, "_id=? AND hour_start>?)"},
	} {
		query, args := usageQuerySQL(q.q)
		searches(fmt.Sprintf("QueryUsage %+v", q.q), explain(t, s, query, args...), q.search)
	}
	// Marking a newly capped consumer's leases walks the active leases
	// pool by pool, never the ended ones.
	wantPlan(t, "mark a capped consumer's leases", explain(t, s, markConsumerSQL, id), "leases_active_pool (pool_id=?)")
	// Skipping exhausted proxies keeps every walk on its index.
	pre := sqlFilter{where: allowanceSQL, args: []any{1}}
	for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed, pharox.RoundRobin} {
		for _, w := range strategyWalks(st, uuid.NewString()) {
			args := append(append(append([]any{id}, w.args...), 100), pre.args...)
			wantPlan(t, string(st)+" skipping exhausted proxies", explain(t, s, walkSQL(w, pre, true), args...), "USING INDEX "+w.index+" (pool_id=?")
		}
	}
	wantPlan(t, "random skipping exhausted proxies", explain(t, s, randomAllSQL+` AND s.pos IN (?, ?)`+pre.where, id, 1, 2, 1),
		"PRIMARY KEY (pool_id=? AND pos=?)")
}
