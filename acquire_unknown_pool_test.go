package pharox_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

// TestAcquireFromUnknownPoolCreatesNoConsumer: acquisitions from pools that
// do not exist, under made-up consumer names, fail with ErrPoolNotFound and
// leave no consumer behind (so they cannot grow the store without bound).
func TestAcquireFromUnknownPoolCreatesNoConsumer(t *testing.T) {
	ctx := context.Background()
	m, store, _ := newPool(t, 1, 1)
	before, err := store.ListConsumers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		opts := &pharox.AcquireOptions{Consumer: fmt.Sprintf("made-up-%d", i)}
		if _, err := m.Acquire(ctx, fmt.Sprintf("no-such-pool-%d", i), opts); !errors.Is(err, pharox.ErrPoolNotFound) {
			t.Fatalf("Acquire from an unknown pool: %v, want ErrPoolNotFound", err)
		}
		wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		_, err := m.AcquireWait(wctx, "no-such-pool", &pharox.AcquireOptions{Consumer: fmt.Sprintf("waiting-%d", i)})
		cancel()
		if !errors.Is(err, pharox.ErrPoolNotFound) {
			t.Fatalf("AcquireWait from an unknown pool: %v, want ErrPoolNotFound", err)
		}
	}
	after, err := store.ListConsumers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		var names []string
		for _, c := range after {
			names = append(names, c.Name)
		}
		t.Fatalf("acquisitions from unknown pools created consumers: %d before, now %v", len(before), names)
	}
	// A known consumer whose id the Manager has cached still gets the
	// store's answer for an unknown pool.
	if _, err := m.Acquire(ctx, "main", &pharox.AcquireOptions{Consumer: "real"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Acquire(ctx, "elsewhere", &pharox.AcquireOptions{Consumer: "real"}); !errors.Is(err, pharox.ErrPoolNotFound) {
		t.Fatalf("cached consumer, unknown pool: %v, want ErrPoolNotFound", err)
	}
}
