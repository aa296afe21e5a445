package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/batch"
)

// acquireKey groups acquisitions that one acquire_many.lua call can serve:
// the script takes the pool, strategy and filter once.
type acquireKey struct {
	pool, strategy, spec string
}

// execAcquire serves a batch of acquisitions without session keys. A batch
// of one takes acquire.lua, exactly as without batching; larger ones take
// acquire_many.lua, whose items succeed or fail one by one.
func (s *Store) execAcquire(ctx context.Context, k acquireKey, reqs []pharox.AcquireRequest) []batch.Result[*pharox.Lease] {
	if s.batchHook != nil {
		s.batchHook("acquire", len(reqs))
	}
	out := make([]batch.Result[*pharox.Lease], len(reqs))
	if len(reqs) == 1 {
		out[0].Val, out[0].Err = s.acquireOne(ctx, reqs[0], k.spec)
		return out
	}
	ids := make([]uuid.UUID, len(reqs))
	known := make([]string, len(reqs))
	args := make([]any, 0, 4+6*len(reqs))
	args = append(args, k.pool, k.strategy, k.spec, s.poolHint(k.pool))
	for i, r := range reqs {
		ids[i] = uuid.New()
		known[i] = s.consumerKnown(r.ConsumerID)
		args = append(args, r.ConsumerID.String(), r.ConsumerName, ids[i].String(),
			r.Duration.Microseconds(), rand.Int64N(1<<50), known[i])
	}
	v, err := s.run(ctx, scriptAcquireMany, args...)
	if err == nil {
		if arr, ok := v.([]any); !ok || len(arr) != len(reqs) {
			err = errors.New("unexpected reply")
		}
	}
	if err != nil {
		// Nothing tells which items the script served before failing (if
		// it ran at all); those leases are counted until they expire,
		// like any lease whose reply was lost.
		err = wrap(err, "acquire from pool %q", k.pool)
		if errors.Is(err, pharox.ErrPoolNotFound) {
			s.poolIDs.Delete(k.pool)
		}
		for i := range out {
			out[i].Err = err
		}
		return out
	}
	for i, item := range v.([]any) {
		switch item := item.(type) {
		case nil:
			out[i].Err = fmt.Errorf("redis: acquire from pool %q: %w", k.pool, pharox.ErrNoProxyAvailable)
		case string:
			sentinel := codeError(item)
			if sentinel == nil {
				sentinel = fmt.Errorf("unexpected reply %q", item)
			}
			if errors.Is(sentinel, pharox.ErrPoolNotFound) {
				s.poolIDs.Delete(k.pool)
			}
			out[i].Err = fmt.Errorf("redis: acquire from pool %q: %w", k.pool, sentinel)
		default:
			out[i].Val, out[i].Err = s.leaseFromAcquire(reqs[i], ids[i], known[i], item)
		}
	}
	return out
}

// execRelease serves a batch of releases: release.lua for one, else
// release_many.lua.
func (s *Store) execRelease(ctx context.Context, _ struct{}, ids []uuid.UUID) []batch.Result[*pharox.Lease] {
	if s.batchHook != nil {
		s.batchHook("release", len(ids))
	}
	out := make([]batch.Result[*pharox.Lease], len(ids))
	if len(ids) == 1 {
		out[0].Val, out[0].Err = s.releaseOne(ctx, ids[0])
		return out
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id.String()
	}
	v, err := s.run(ctx, scriptReleaseMany, args...)
	arr, ok := v.([]any)
	if err == nil && (!ok || len(arr) != len(ids)) {
		err = errors.New("unexpected reply")
	}
	if err != nil {
		for i, id := range ids {
			out[i].Err = wrap(err, "release lease %s", id)
		}
		return out
	}
	for i, item := range arr {
		id := ids[i]
		if code, ok := item.(string); ok {
			sentinel := codeError(code)
			if sentinel == nil {
				sentinel = fmt.Errorf("unexpected reply %q", code)
			}
			out[i].Err = fmt.Errorf("redis: release lease %s: %w", id, sentinel)
			continue
		}
		l, err := leaseFromReply(id.String(), item)
		if err != nil {
			err = fmt.Errorf("redis: release lease %s: %w", id, err)
		}
		out[i].Val, out[i].Err = l, err
	}
	return out
}

// discardLease releases a lease acquired for a caller that stopped waiting,
// so its slot does not stay taken until the lease expires. It runs on the
// batch's goroutine, hence the bounded wait; a failed release leaves the
// lease to expire.
func (s *Store) discardLease(l *pharox.Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), discardTimeout)
	defer cancel()
	_, _ = s.ReleaseLease(ctx, l.ID)
}
