package postgres

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pharox/pharox"
)

// TestNewRefusesBadOptions: New fails with the first invalid option's
// error, wrapping ErrInvalidArgument in one sentence that names the option
// and the value, before it queries the database (the pool points at a
// closed port and never connects).
func TestNewRefusesBadOptions(t *testing.T) {
	pool, err := pgxpool.New(t.Context(), "postgres://postgres@127.0.0.1:1/none?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for _, tc := range []struct {
		name string
		opts []Option
		want string
	}{
		{"schema", []Option{WithSchema("Tenant")}, `postgres: WithSchema: name must match ^[a-z_][a-z0-9_]{0,62}$, got "Tenant"`},
		{"acquire attempts", []Option{WithAcquireAttempts(0)}, "postgres: WithAcquireAttempts: attempts must be in 1-1000, got 0"},
		{"max batch", []Option{WithMaxBatch(1001)}, "postgres: WithMaxBatch: batch size must be in 1-1000, got 1001"},
		{"filter scan budget", []Option{WithFilterScanBudget(9)}, "postgres: WithFilterScanBudget: budget must be in 10-1000000, got 9"},
		{"first error wins", []Option{nil, WithMaxBatch(8), WithAcquireAttempts(-1), WithSchema("")}, "postgres: WithAcquireAttempts: attempts must be in 1-1000, got -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(t.Context(), pool, tc.opts...)
			if !errors.Is(err, pharox.ErrInvalidArgument) || err.Error() != pharox.ErrInvalidArgument.Error()+": "+tc.want {
				t.Fatalf("New: %v, %v; want ErrInvalidArgument saying %q", s, err, tc.want)
			}
			if err := Migrate(t.Context(), pool, tc.opts...); err == nil || err.Error() != pharox.ErrInvalidArgument.Error()+": "+tc.want {
				t.Fatalf("Migrate: %v; want ErrInvalidArgument saying %q", err, tc.want)
			}
		})
	}
}
