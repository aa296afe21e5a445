package sqlite_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/sqlite"
)

// TestOpenRefusesBadOptions: Open fails with the first invalid option's
// error, wrapping ErrInvalidArgument in one sentence that names the option
// and the value, before it creates the database file.
func TestOpenRefusesBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []sqlite.Option
		want string
	}{
		{"busy timeout", []sqlite.Option{sqlite.WithBusyTimeout(-time.Second)}, "sqlite: WithBusyTimeout: timeout must not be negative, got -1s"},
		{"synchronous", []sqlite.Option{sqlite.WithSynchronous("sometimes")}, `sqlite: WithSynchronous: mode must be OFF, NORMAL, FULL or EXTRA, got "sometimes"`},
		{"read conns", []sqlite.Option{sqlite.WithReadConns(0)}, "sqlite: WithReadConns: count must be at least 1, got 0"},
		{"budget", []sqlite.Option{sqlite.WithFilterScanBudget(0)}, "sqlite: WithFilterScanBudget: budget must be at least 1, got 0"},
		{"nil clock", []sqlite.Option{sqlite.WithClock(nil)}, "sqlite: WithClock: clock is nil"},
		{"first error wins", []sqlite.Option{nil, sqlite.WithReadConns(2), sqlite.WithReadConns(-1), sqlite.WithClock(nil)}, "sqlite: WithReadConns: count must be at least 1, got -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.db")
			s, err := sqlite.Open(t.Context(), path, tc.opts...)
			if !errors.Is(err, pharox.ErrInvalidArgument) || err.Error() != pharox.ErrInvalidArgument.Error()+": "+tc.want {
				if s != nil {
					s.Close()
				}
				t.Fatalf("Open: %v; want ErrInvalidArgument saying %q", err, tc.want)
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Open with a bad option left a database file (stat: %v)", err)
			}
		})
	}
}

// TestOpenAcceptsBoundaryOptions: the smallest valid values, a mode in
// lower case and nil options open a usable store.
func TestOpenAcceptsBoundaryOptions(t *testing.T) {
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "x.db"), nil,
		sqlite.WithBusyTimeout(0), sqlite.WithSynchronous("full"), sqlite.WithReadConns(1),
		sqlite.WithFilterScanBudget(1), sqlite.WithClock(time.Now))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := s.Synchronous(t.Context()); err != nil || got != "FULL" {
		t.Fatalf("Synchronous = %q, %v; want FULL", got, err)
	}
}
