package gateway

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// ErrDefaultPoolMissing means Config.DefaultPool names no pool of the
// lease source. It wraps pharox.ErrPoolNotFound.
var ErrDefaultPoolMissing = fmt.Errorf("default pool does not exist: %w", pharox.ErrPoolNotFound)

// Check reports whether the gateway can serve as configured: its lease
// source answers and accepts its credentials, and the default pool, when
// one is set, exists (ErrDefaultPoolMissing otherwise). Run it before
// listening to fail fast, and from a readiness probe. A Leaser that does
// not implement PoolLookup is taken as ready.
func (g *Gateway) Check(ctx context.Context) error {
	lookup, ok := g.leaser.(PoolLookup)
	if !ok {
		return nil
	}
	if g.cfg.DefaultPool != "" {
		_, err := lookup.PoolByName(ctx, g.cfg.DefaultPool)
		if errors.Is(err, pharox.ErrPoolNotFound) {
			return ErrDefaultPoolMissing
		}
		return err
	}
	// No pool to look for: ask for one that cannot exist, which answers
	// "not found" only when the source is reachable and lets us in.
	_, err := lookup.PoolByID(ctx, uuid.Nil)
	if errors.Is(err, pharox.ErrPoolNotFound) {
		return nil
	}
	if err == nil {
		return nil
	}
	return err
}
