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
// size (BenchmarkScale shows the same in time).
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
	if _, err := s.db.ExecContext(ctx, s.q(`ANALYZE TABLE {p}proxies`)); err != nil {
		t.Fatal(err)
	}
	for _, st := range pharox.AllStrategies {
		for _, f := range []*pharox.Filters{nil, {Country: "AR"}} {
			args := []any{idArg(pool.ID)}
			filter := filterSQL(f, "p", &args)
			extra := ""
			switch st {
			case pharox.RoundRobin:
				extra, args = " AND p.id > ?", append([]any{args[0], "8"}, args[1:]...)
			case pharox.Random:
				extra, args = " AND p.rnd >= ?", append([]any{args[0], int64(0)}, args[1:]...)
			}
			plan := plans[st]
			key, extraCol := explain(t, s.db, "EXPLAIN "+s.candidateSQL(plan, extra, filter, true), args...)
			if want := s.cfg.prefix + "proxies_" + plan.index; key != want {
				t.Errorf("%s (filters %+v): EXPLAIN key = %q, want %q", st, f, key, want)
			}
			if strings.Contains(extraCol, "filesort") {
				t.Errorf("%s (filters %+v): EXPLAIN Extra = %q: the candidates are sorted, not walked in index order", st, f, extraCol)
			}
		}
	}
}

// explain runs an EXPLAIN of a one-table statement and returns its key and
// Extra columns.
func explain(t *testing.T, db *sql.DB, query string, args ...any) (key, extra string) {
	t.Helper()
	rows, err := db.QueryContext(context.Background(), query, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, query)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		t.Fatalf("EXPLAIN returned no row: %v", rows.Err())
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		t.Fatal(err)
	}
	for i, c := range cols {
		switch c {
		case "key":
			key = vals[i].String
		case "Extra":
			extra = vals[i].String
		}
	}
	return key, extra
}
