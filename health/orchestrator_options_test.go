package health

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
)

// Out-of-range options used to fall back to defaults silently (a negative
// MaxBannedShare even switched the ban guard off); now they name themselves
// and the orchestrator refuses to sweep.
func TestNewOrchestratorRejectsOutOfRangeOptions(t *testing.T) {
	checker, err := NewChecker(CheckerOptions{TargetURL: "http://127.0.0.1:1/"})
	if err != nil {
		t.Fatal(err)
	}
	store := testfactory.Memory(t)
	t.Cleanup(func() { store.Close() })
	cases := []struct {
		name string
		opts OrchestratorOptions
		want string
	}{
		{"negative concurrency", OrchestratorOptions{Concurrency: -1}, "Concurrency must not be negative, got -1"},
		{"negative rate", OrchestratorOptions{RateLimit: -2}, "RateLimit must not be negative, got -2"},
		{"negative failure threshold", OrchestratorOptions{FailureThreshold: -5}, "FailureThreshold must not be negative, got -5"},
		{"negative ban threshold", OrchestratorOptions{BanThreshold: -1}, "BanThreshold must not be negative, got -1"},
		{"negative max ban cooldown", OrchestratorOptions{MaxBanCooldown: -time.Hour}, "MaxBanCooldown must not be negative, got -1h0m0s"},
		{"negative banned share", OrchestratorOptions{MaxBannedShare: -1}, "MaxBannedShare must be between 0 and 1, got -1"},
		{"banned share above one", OrchestratorOptions{MaxBannedShare: 2}, "MaxBannedShare must be between 0 and 1, got 2"},
		{"negative report limit", OrchestratorOptions{ReportLimit: -3}, "ReportLimit must not be negative, got -3"},
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOrchestrator(store, checker, tc.opts)
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("%s: %v, want ErrInvalidArgument with %q", what, err, tc.want)
				}
			}
			check("Err", o.Err())
			_, err := o.SweepAll(ctx)
			check("SweepAll", err)
			_, err = o.SweepPool(ctx, "main")
			check("SweepPool", err)
			check("Run", o.Run(ctx, time.Minute))
		})
	}
	if err := NewOrchestrator(store, checker, OrchestratorOptions{}).Err(); err != nil {
		t.Fatalf("zero options: %v", err)
	}
	if err := NewOrchestrator(nil, checker, OrchestratorOptions{}).Err(); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("nil store: %v", err)
	}
}
