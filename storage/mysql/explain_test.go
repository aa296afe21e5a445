package mysql

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/pharox/pharox"
)

// TestStrategiesAreIndexWalks checks with EXPLAIN that every strategy's
// candidate statement reads its own index in the order it needs: no
// filesort, so the walk stops at the first free row whatever the pool's
// size (BenchmarkScale shows the same in time). With a target (every
// second proxy cools down for it), the walk is the same and each proxy
// it reaches is probed in proxy_targets by primary key, a dependent
// subquery: never a scan of the target's entries.
func TestStrategiesAreIndexWalks(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "explain"})
	if err != nil {
		t.Fatal(err)
	}
	ps := make([]pharox.Proxy, 2000)
	for i := range ps {
		ps[i] = pharox.Proxy{PoolID: pool.ID, Host: "10.0.0.1", Port: 1 + i, Protocol: pharox.ProtocolHTTP, Country: []string{"AR", "UY"}[i%2]}
	}
	if _, err := s.AddProxies(ctx, ps); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, s.q(`INSERT INTO {p}proxy_targets (proxy_id, target, bans, cooling_until, banned_at, updated_at)
		SELECT id, 'example.com', 1, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)
		FROM {p}proxies WHERE port % 2 = 0`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, s.q(`ANALYZE TABLE {p}proxies, {p}proxy_targets`)); err != nil {
		t.Fatal(err)
	}
	for _, st := range pharox.AllStrategies {
		for _, tc := range []struct {
			f      *pharox.Filters
			target string
		}{{nil, ""}, {&pharox.Filters{Country: "AR"}, ""}, {nil, "example.com"}, {&pharox.Filters{Country: "AR"}, "example.com"}} {
			f := tc.f
			args := []any{idArg(pool.ID)}
			filter := filterSQL(f, "p", &args)
			if tc.target != "" {
				filter = "(" + filter + " AND " + s.notCoolingSQL("p") + ")"
				args = append(args, tc.target)
			}
			extra := ""
			switch st {
			case pharox.RoundRobin:
				extra, args = " AND p.id > ?", append([]any{args[0], "8"}, args[1:]...)
			case pharox.Random:
				extra, args = " AND p.rnd >= ?", append([]any{args[0], int64(0)}, args[1:]...)
			}
			plan := plans[st]
			rows := explainRows(t, s.db, "EXPLAIN "+s.candidateSQL(plan, extra, filter, true, false), args...)
			key, extraCol := rows[0]["key"], rows[0]["Extra"]
			if want := s.cfg.prefix + "proxies_" + plan.index; key != want {
				t.Errorf("%s (filters %+v): EXPLAIN key = %q, want %q", st, f, key, want)
			}
			if strings.Contains(extraCol, "filesort") {
				t.Errorf("%s (filters %+v): EXPLAIN Extra = %q: the candidates are sorted, not walked in index order", st, f, extraCol)
			}
			if tc.target == "" {
				continue
			}
			if len(rows) != 2 || rows[1]["table"] != "t" || rows[1]["select_type"] != "DEPENDENT SUBQUERY" ||
				rows[1]["key"] != "PRIMARY" || rows[1]["type"] != "eq_ref" {
				t.Errorf("%s (filters %+v, target %s): proxy_targets is not probed by primary key per candidate:\n%v", st, f, tc.target, rows)
			}
		}
	}
}

// explainRows runs an EXPLAIN and returns its rows, column by name.
func explainRows(t *testing.T, db *sql.DB, query string, args ...any) []map[string]string {
	t.Helper()
	rows, err := db.QueryContext(context.Background(), query, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, query)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []map[string]string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for i, c := range cols {
			m[c] = vals[i].String
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil || len(out) == 0 {
		t.Fatalf("EXPLAIN returned no row: %v", err)
	}
	return out
}
