package mysql

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
)

// TestFilterSQLMatchesReference checks the generated SQL against
// pharox.Filters.Match, the reference semantics, on random proxies and
// random nested filters.
func TestFilterSQLMatchesReference(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "filters"})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	in := make([]pharox.Proxy, 300)
	for i := range in {
		in[i] = storagetest.RandomProxy(r, pool.ID, i)
	}
	proxies, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	matchedSome := 0
	for i := range 800 {
		f := storagetest.RandomFilter(r, proxies, 2)
		f.Normalize()
		if err := f.Validate(); err != nil {
			t.Fatalf("filter %d invalid: %v", i, err)
		}
		var want []uuid.UUID
		for _, p := range proxies {
			if f.Match(p) {
				want = append(want, p.ID)
			}
		}
		args := []any{idArg(pool.ID)}
		query := s.q(`SELECT p.id FROM {p}proxies p WHERE p.pool_id = ? AND ` + filterSQL(&f, "p", &args) + ` ORDER BY p.id`)
		rows, err := s.db.QueryContext(ctx, query, args...)
		if err != nil {
			t.Fatalf("filter %d: %v\n%s", i, err, query)
		}
		var got []uuid.UUID
		for rows.Next() {
			var id uuid.UUID
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			got = append(got, id)
		}
		rows.Close()
		slices.SortFunc(want, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
		if !slices.Equal(got, want) {
			t.Fatalf("filter %d %+v: SQL matched %d proxies, Filters.Match %d\n%s", i, f, len(got), len(want), query)
		}
		if len(want) > 0 && len(want) < len(proxies) {
			matchedSome++
		}
	}
	// Guard against a generator that only ever matches all or nothing.
	if matchedSome < 200 {
		t.Fatalf("only %d of 800 filters matched a proper subset: the test is not discriminating", matchedSome)
	}
}
