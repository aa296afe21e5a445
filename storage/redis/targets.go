package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

var _ pharox.TargetStore = (*Store)(nil)

// decodeTarget builds a TargetState from its record in proxy:<id>:t,
// "streak|bans|cool|banned|code|succ|fail|upd|tok|reason" (see
// targets.lua; times in microseconds, empty when unset).
func decodeTarget(proxyID uuid.UUID, target, rec string) (*pharox.TargetState, error) {
	f := strings.SplitN(rec, "|", 10)
	if len(f) != 10 {
		return nil, fmt.Errorf("target entry %q of proxy %s: malformed record", target, proxyID)
	}
	st := &pharox.TargetState{ProxyID: proxyID, Target: target, LastReason: f[9]}
	var errs [8]error
	st.FailureStreak, errs[0] = strconv.Atoi(f[0])
	st.Bans, errs[1] = strconv.Atoi(f[1])
	st.CoolingUntil, errs[2] = optMicros(f[2])
	st.BannedAt, errs[3] = optMicros(f[3])
	st.LastStatusCode, errs[4] = strconv.Atoi(f[4])
	st.LastSuccessAt, errs[5] = optMicros(f[5])
	st.LastFailureAt, errs[6] = optMicros(f[6])
	st.UpdatedAt, errs[7] = micros(f[7])
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("target entry %q of proxy %s: malformed record: %v", target, proxyID, err)
	}
	return st, nil
}

// ApplyTargetOutcome applies o in one script, target_apply.lua, which
// mirrors [pharox.TargetState.Apply] (storagetest's Targets section
// compares the two on random outcome sequences) and updates the entry's
// indexes, evicts beyond p.MaxTargetsPerProxy and counts the proxy's
// recent cool-downs in the same atomic step, with the server's clock when
// o.At is zero. One script rather than Apply run here between a read and
// a compare-and-set write: a cool-down must start at the time the script
// stamps it and be visible to acquisitions from that instant, which only
// a single script gives (with a read and a later write, an acquisition
// between the two could take the proxy after the stamped start). The
// exponential growth stays the Go rule's: the client passes
// [pharox.TargetPolicy.Cooldown] of each ban in a row up to MaxCooldown.
// Durations count in whole microseconds (rounded down), like every time
// the store keeps. The same call sent twice by go-redis is applied once:
// the record keeps the token of the call that wrote it.
func (s *Store) ApplyTargetOutcome(ctx context.Context, o pharox.TargetOutcome, p pharox.TargetPolicy) (*pharox.TargetState, int, error) {
	if err := o.Validate(); err != nil {
		return nil, 0, fmt.Errorf("redis: apply target outcome: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, 0, fmt.Errorf("redis: apply target outcome: %w", err)
	}
	at := ""
	if !o.At.IsZero() {
		at = strconv.FormatInt(o.At.UnixMicro(), 10)
	}
	args := []any{o.ProxyID.String(), o.Target, string(o.Kind), o.StatusCode, o.Reason, at, callToken(),
		p.FailureThreshold, p.Retention.Microseconds(), p.MaxTargetsPerProxy, p.EscalateWindow.Microseconds()}
	for bans := 1; ; bans++ {
		d := p.Cooldown(bans)
		args = append(args, d.Microseconds())
		if d >= p.MaxCooldown {
			break
		}
	}
	v, err := s.run(ctx, scriptTargetApply, args...)
	if err != nil {
		return nil, 0, wrap(err, "apply %s outcome for target %q to proxy %s", o.Kind, o.Target, o.ProxyID)
	}
	arr, _ := v.([]any)
	if len(arr) != 2 {
		return nil, 0, fmt.Errorf("redis: apply %s outcome for target %q to proxy %s: unexpected reply", o.Kind, o.Target, o.ProxyID)
	}
	rec, _ := arr[0].(string)
	n, _ := arr[1].(int64)
	st, err := decodeTarget(o.ProxyID, o.Target, rec)
	if err != nil {
		return nil, 0, fmt.Errorf("redis: apply %s outcome for target %q to proxy %s: %w", o.Kind, o.Target, o.ProxyID, err)
	}
	return st, int(n), nil
}

// ListTargetStates returns the proxy's entries ordered by target: one
// pipeline of two reads.
func (s *Store) ListTargetStates(ctx context.Context, proxyID uuid.UUID) ([]*pharox.TargetState, error) {
	k := s.prefix + "proxy:" + proxyID.String()
	var exists *goredis.IntCmd
	var entries *goredis.MapStringStringCmd
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		exists = p.Exists(ctx, k)
		entries = p.HGetAll(ctx, k+":t")
		return nil
	})
	if err != nil {
		return nil, wrap(err, "list target states of proxy %s", proxyID)
	}
	if exists.Val() == 0 {
		return nil, fmt.Errorf("redis: list target states of proxy %s: %w", proxyID, pharox.ErrProxyNotFound)
	}
	out := make([]*pharox.TargetState, 0, len(entries.Val()))
	for t, v := range entries.Val() {
		st, err := decodeTarget(proxyID, t, v)
		if err != nil {
			return nil, fmt.Errorf("redis: list target states of proxy %s: %w", proxyID, err)
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b *pharox.TargetState) int { return strings.Compare(a.Target, b.Target) })
	return out, nil
}

// PoolTargetStats returns per-target health of the pool, read outside any
// script in three pipelined rounds: the pool's targets (p:<pid>:tn) and
// status counters; per target, the proxies cooling now (p:<pid>:tc:<t>)
// and the cool-downs started in the last hour (p:<pid>:tb:<t>); the
// status of each cooling proxy. Its cost grows with the targets seen in
// the pool and the proxies cooling for them, not with the pool's size. The
// rounds are not one snapshot: an outcome applied meanwhile may show in
// some counts only.
func (s *Store) PoolTargetStats(ctx context.Context, poolID uuid.UUID) ([]*pharox.TargetStats, error) {
	pid := poolID.String()
	pool := s.prefix + "p:" + pid + ":"
	var exists *goredis.IntCmd
	var now *goredis.TimeCmd
	var targets *goredis.MapStringStringCmd
	var cnt *goredis.SliceCmd
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		exists = p.Exists(ctx, s.poolKey(pid))
		now = p.Time(ctx)
		targets = p.HGetAll(ctx, pool+"tn")
		cnt = p.HMGet(ctx, pool+"cnt", string(pharox.StatusActive), string(pharox.StatusSlow))
		return nil
	})
	if err != nil {
		return nil, wrap(err, "target stats of pool %s", poolID)
	}
	if exists.Val() == 0 {
		return nil, fmt.Errorf("redis: target stats of pool %s: %w", poolID, pharox.ErrPoolNotFound)
	}
	leasable := 0
	for _, v := range cnt.Val() {
		str, _ := v.(string)
		leasable += atoi(str)
	}
	names := make([]string, 0, len(targets.Val()))
	for t := range targets.Val() {
		names = append(names, t)
	}
	slices.Sort(names)
	us := now.Val().UnixMicro()
	cooling := make([]*goredis.StringSliceCmd, len(names))
	banned := make([]*goredis.IntCmd, len(names))
	_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, t := range names {
			cooling[i] = p.ZRangeByScore(ctx, pool+"tc:"+t, &goredis.ZRangeBy{Min: "(" + strconv.FormatInt(us, 10), Max: "+inf"})
			banned[i] = p.ZCount(ctx, pool+"tb:"+t, strconv.FormatInt(us-time.Hour.Microseconds(), 10), "+inf")
		}
		return nil
	})
	if err != nil {
		return nil, wrap(err, "target stats of pool %s", poolID)
	}
	statusOf := map[string]*goredis.StringCmd{}
	_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, c := range cooling {
			for _, id := range c.Val() {
				if statusOf[id] == nil {
					statusOf[id] = p.HGet(ctx, s.prefix+"proxy:"+id, "status")
				}
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return nil, wrap(err, "target stats of pool %s", poolID)
	}
	out := make([]*pharox.TargetStats, len(names))
	for i, t := range names {
		st := &pharox.TargetStats{Target: t, CoolingProxies: len(cooling[i].Val()), BansLastHour: int(banned[i].Val())}
		coolingLeasable := 0
		for _, id := range cooling[i].Val() {
			if pharox.ProxyStatus(statusOf[id].Val()).Leasable() {
				coolingLeasable++
			}
		}
		st.UsableProxies = max(0, leasable-coolingLeasable)
		out[i] = st
	}
	return out, nil
}

// PurgeTargetStates deletes the entries that went idle before idleBefore
// (see [pharox.TargetState.IdleSince]), in batches of at most cleanupBatch
// per script, and returns how many it deleted.
func (s *Store) PurgeTargetStates(ctx context.Context, idleBefore time.Time) (int, error) {
	total := 0
	for {
		v, err := s.run(ctx, scriptTargetPurge, ceilMicros(idleBefore), cleanupBatch)
		if err != nil {
			return total, wrap(err, "purge target states")
		}
		arr, _ := v.([]any)
		if len(arr) != 2 {
			return total, fmt.Errorf("redis: purge target states: unexpected reply")
		}
		n, _ := arr[0].(int64)
		read, _ := arr[1].(int64)
		total += int(n)
		if read < cleanupBatch {
			return total, nil
		}
	}
}
