package memory_test

import (
	"errors"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

// TestNewRefusesBadOptions: New fails with the first invalid option's
// error, wrapping ErrInvalidArgument in one sentence that names the option
// and the value, instead of ignoring or clamping the value.
func TestNewRefusesBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []memory.Option
		want string
	}{
		{"budget 0", []memory.Option{memory.WithFilterScanBudget(0)}, "memory: WithFilterScanBudget: budget must be at least 1, got 0"},
		{"budget negative", []memory.Option{memory.WithFilterScanBudget(-5)}, "memory: WithFilterScanBudget: budget must be at least 1, got -5"},
		{"retention negative", []memory.Option{memory.WithEndedLeaseRetention(-1)}, "memory: WithEndedLeaseRetention: count must be at least 0, got -1"},
		{"nil clock", []memory.Option{memory.WithClock(nil)}, "memory: WithClock: clock is nil"},
		{"first error wins", []memory.Option{nil, memory.WithEndedLeaseRetention(10), memory.WithClock(nil), memory.WithFilterScanBudget(0)}, "memory: WithClock: clock is nil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := memory.New(tc.opts...)
			if !errors.Is(err, pharox.ErrInvalidArgument) || err.Error() != pharox.ErrInvalidArgument.Error()+": "+tc.want {
				t.Fatalf("New: %v, %v; want ErrInvalidArgument saying %q", s, err, tc.want)
			}
			if s != nil {
				t.Fatal("New returned a store with its error")
			}
		})
	}
}

// TestNewAcceptsBoundaryOptions: the smallest valid values and nil options
// make a usable store.
func TestNewAcceptsBoundaryOptions(t *testing.T) {
	s, err := memory.New(nil, memory.WithFilterScanBudget(1), memory.WithEndedLeaseRetention(0), memory.WithClock(time.Now))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreatePool(t.Context(), pharox.Pool{Name: "p"}); err != nil {
		t.Fatal(err)
	}
}
