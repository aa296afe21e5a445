package sqlite

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

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
