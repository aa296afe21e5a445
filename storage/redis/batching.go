package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/batch"
)

// acquireKey groups acquisitions that one acquire_many.lua call can serve:
// the script takes the pool, strategy, filter and target once.
type acquireKey struct {
	pool, strategy, spec, target string
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
	args := make([]any, 0, 5+6*len(reqs))
	args = append(args, k.pool, k.strategy, k.spec, s.poolHint(k.pool), k.target)
	for i, r := range reqs {
		ids[i] = leaseIDOf(r)
		known[i] = s.consumerKnown(r.ConsumerID)
		seed := int64(0)
		if k.spec != "" {
			seed = rand.Int64N(1 << 50)
		}
		args = append(args, r.ConsumerID.String(), ids[i].String(), r.Duration.Microseconds(), seed,
			known[i], encodeWho(r.ConsumerID, r.Target, r.ConsumerName, r.PoolName, ""))
	}
	v, err := s.run(ctx, scriptAcquireMany, args...)
	var head []any
	if err == nil {
		arr, ok := v.([]any)
		if ok && len(arr) == len(reqs)+1 {
			head, ok = arr[0].([]any)
		}
		if !ok || len(head) != 2 {
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
	pid, _ := head[0].(string)
	acq, _ := head[1].(string)
	// An entry leaves out the DYN fields an earlier entry holds.
	dyns := map[string]any{}
	for i, item := range v.([]any)[1:] {
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
		case []any:
			out[i].Val, out[i].Err = s.acquiredEntry(reqs[i], ids[i], known[i], pid, acq, item, dyns)
		default:
			out[i].Err = fmt.Errorf("redis: acquire from pool %q: unexpected reply", k.pool)
		}
	}
	return out
}

// acquiredEntry decodes one acquisition of acquire_many.lua's reply.
func (s *Store) acquiredEntry(req pharox.AcquireRequest, id uuid.UUID, known, pid, acq string, e []any, dyns map[string]any) (*pharox.Lease, error) {
	if len(e) == 3 {
		return s.leaseAgain(req, id, e)
	}
	if len(e) != 4 && len(e) != 5 {
		return nil, fmt.Errorf("redis: acquire from pool %q: unexpected reply", req.PoolName)
	}
	exp, _ := e[0].(string)
	chosen, _ := e[1].(string)
	cur, _ := e[2].(int64)
	dyn := e[3]
	if dyn == nil {
		dyn = dyns[chosen]
	} else {
		dyns[chosen] = dyn
	}
	if len(e) == 5 {
		pid, _ = e[4].(string)
	}
	return s.acquiredLease(req, id, known, pid, acq, exp, chosen, cur, dyn)
}

// execRelease serves a batch of releases: release.lua for one, else
// release_many.lua.
func (s *Store) execRelease(ctx context.Context, _ struct{}, reqs []releaseReq) []batch.Result[*pharox.Lease] {
	if s.batchHook != nil {
		s.batchHook("release", len(reqs))
	}
	out := make([]batch.Result[*pharox.Lease], len(reqs))
	if len(reqs) == 1 {
		out[0].Val, out[0].Err = s.releaseOne(ctx, reqs[0])
		return out
	}
	ids := make([]uuid.UUID, len(reqs))
	args := make([]any, 0, 1+3*len(reqs))
	args = append(args, s.usageTTL())
	for i, r := range reqs {
		ids[i] = r.id
		args = append(args, r.id.String(), callToken(), r.usage)
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
		if code, ok := item.(string); ok && strings.HasPrefix(code, "PHAROX_") {
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
	_, _ = s.ReleaseLease(ctx, l.ID, nil)
}
