package testfactory

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// WithoutTargets wraps s as a store that keeps no per-site (target)
// health, as a store outside this module may: acquisitions with a target
// and the TargetStore calls answer an error wrapping
// pharox.ErrUnsupported, and purging finds nothing to purge. Tests use it
// to check how callers fall back. Everything else, usage and quotas
// included, is s's (the embedded Storage forwards it).
func WithoutTargets(s pharox.Storage) pharox.Storage { return noTargets{s} }

type noTargets struct{ pharox.Storage }

var errNoTargets = fmt.Errorf("%w: per-site (target) health is not kept by this store", pharox.ErrUnsupported)

func (n noTargets) AcquireLease(ctx context.Context, req pharox.AcquireRequest) (*pharox.Lease, error) {
	if req.Target != "" {
		return nil, errNoTargets
	}
	return n.Storage.AcquireLease(ctx, req)
}

func (noTargets) ApplyTargetOutcome(context.Context, pharox.TargetOutcome, pharox.TargetPolicy) (*pharox.TargetState, int, error) {
	return nil, 0, errNoTargets
}

func (noTargets) ListTargetStates(context.Context, uuid.UUID) ([]*pharox.TargetState, error) {
	return nil, errNoTargets
}

func (noTargets) PoolTargetStats(context.Context, uuid.UUID) ([]*pharox.TargetStats, error) {
	return nil, errNoTargets
}

func (noTargets) PurgeTargetStates(context.Context, time.Time) (int, error) { return 0, nil }
