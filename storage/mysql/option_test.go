package mysql

import (
	"database/sql"
	"errors"
	"testing"

	"github.com/pharox/pharox"
)

// TestNewRefusesBadOptions: New, Open and Migrate fail with the first
// invalid option's error, wrapping ErrInvalidArgument in one sentence that
// names the option and the value, before they contact the server (the DSN
// points at a closed port).
func TestNewRefusesBadOptions(t *testing.T) {
	const dsn = "root@tcp(127.0.0.1:1)/none?timeout=1s"
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, tc := range []struct {
		name string
		opts []Option
		want string
	}{
		{"table prefix", []Option{WithTablePrefix("Pharox_")}, `mysql: WithTablePrefix: prefix must match ^[a-z_][a-z0-9_]{0,31}$, got "Pharox_"`},
		{"acquire attempts", []Option{WithAcquireAttempts(1001)}, "mysql: WithAcquireAttempts: attempts must be in 1-1000, got 1001"},
		{"max conns", []Option{WithMaxConns(0)}, "mysql: WithMaxConns: connections must be in 1-10000, got 0"},
		{"first error wins", []Option{nil, WithMaxConns(2), WithMaxConns(-3), WithTablePrefix("")}, "mysql: WithMaxConns: connections must be in 1-10000, got -3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := pharox.ErrInvalidArgument.Error() + ": " + tc.want
			s, err := New(t.Context(), db, tc.opts...)
			if !errors.Is(err, pharox.ErrInvalidArgument) || err.Error() != want {
				t.Fatalf("New: %v, %v; want ErrInvalidArgument saying %q", s, err, tc.want)
			}
			if s, err := Open(t.Context(), dsn, tc.opts...); err == nil || err.Error() != want {
				t.Fatalf("Open: %v, %v; want ErrInvalidArgument saying %q", s, err, tc.want)
			}
			if err := Migrate(t.Context(), db, tc.opts...); err == nil || err.Error() != want {
				t.Fatalf("Migrate: %v; want ErrInvalidArgument saying %q", err, tc.want)
			}
		})
	}
}
