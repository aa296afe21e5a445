package mysql

import (
	"context"
	"fmt"
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
	storagetest.CheckFilterTranslation(t, s, func(ctx context.Context, poolID uuid.UUID, f *pharox.Filters) ([]uuid.UUID, error) {
		args := []any{idArg(poolID)}
		query := s.q(`SELECT p.id FROM {p}proxies p WHERE p.pool_id = ? AND ` + filterSQL(f, "p", &args))
		rows, err := s.db.QueryContext(ctx, query, args...)
		if err != nil {
			return nil, fmt.Errorf("%w\n%s", err, query)
		}
		defer rows.Close()
		var got []uuid.UUID
		for rows.Next() {
			var id uuid.UUID
			if err := rows.Scan(&id); err != nil {
				return nil, err
			}
			got = append(got, id)
		}
		return got, rows.Err()
	})
}
