package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

var _ pharox.TargetStore = (*Store)(nil)

// targetRecord is a target entry as stored in proxy:<id>:t (times in
// microseconds). Tok is the token of the call that wrote it, so that a
// write sent twice recognises its own record (see target_write.lua).
type targetRecord struct {
	Streak   int    `json:"s,omitempty"`
	Bans     int    `json:"b,omitempty"`
	Cool     *int64 `json:"c,omitempty"`
	BannedAt *int64 `json:"ba,omitempty"`
	Reason   string `json:"r,omitempty"`
	Code     int    `json:"sc,omitempty"`
	Success  *int64 `json:"ok,omitempty"`
	Failure  *int64 `json:"f,omitempty"`
	Updated  int64  `json:"u"`
	Tok      string `json:"t,omitempty"`
}

func microsPtr(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	us := t.UnixMicro()
	return &us
}

func timePtr(us *int64) *time.Time {
	if us == nil {
		return nil
	}
	t := time.UnixMicro(*us).UTC()
	return &t
}

func encodeTarget(st *pharox.TargetState, tok string) (string, error) {
	return jsonString(targetRecord{
		Streak: st.FailureStreak, Bans: st.Bans, Cool: microsPtr(st.CoolingUntil), BannedAt: microsPtr(st.BannedAt),
		Reason: st.LastReason, Code: st.LastStatusCode, Success: microsPtr(st.LastSuccessAt),
		Failure: microsPtr(st.LastFailureAt), Updated: st.UpdatedAt.UnixMicro(), Tok: tok,
	})
}

func decodeTarget(proxyID uuid.UUID, target, v string) (*pharox.TargetState, error) {
	var r targetRecord
	if err := json.Unmarshal([]byte(v), &r); err != nil {
		return nil, fmt.Errorf("target entry %s of proxy %s: malformed record", target, proxyID)
	}
	return &pharox.TargetState{
		ProxyID: proxyID, Target: target, FailureStreak: r.Streak, Bans: r.Bans,
		CoolingUntil: timePtr(r.Cool), BannedAt: timePtr(r.BannedAt), LastReason: r.Reason,
		LastStatusCode: r.Code, LastSuccessAt: timePtr(r.Success), LastFailureAt: timePtr(r.Failure),
		UpdatedAt: time.UnixMicro(r.Updated).UTC(),
	}, nil
}

// optMicrosArg is t in microseconds, or "" for nil, as scripts take it.
func optMicrosArg(t *time.Time) string {
	if t == nil {
		return ""
	}
	return strconv.FormatInt(t.UnixMicro(), 10)
}

// maxTargetConflicts bounds how often ApplyTargetOutcome reads and applies
// again after another process changed the entry in between.
const maxTargetConflicts = 100

// errTargetContention is ApplyTargetOutcome giving up after
// maxTargetConflicts conflicting writes in a row.
var errTargetContention = errors.New("the entry kept changing under concurrent outcomes; try again")

// ApplyTargetOutcome applies o following [pharox.TargetState.Apply], the
// one rule, run here in Go, between two scripts: target_read.lua returns
// the entry and the server's time, and target_write.lua stores the result
// only if the entry is still the one read (an optimistic compare-and-set
// across processes), updating every index in the same script; after a
// conflict it reads and applies again. It returns the new state and how
// many of the proxy's entries started a cool-down within
// p.EscalateWindow before the outcome's time.
func (s *Store) ApplyTargetOutcome(ctx context.Context, o pharox.TargetOutcome, p pharox.TargetPolicy) (*pharox.TargetState, int, error) {
	if err := o.Validate(); err != nil {
		return nil, 0, fmt.Errorf("redis: apply target outcome: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, 0, fmt.Errorf("redis: apply target outcome: %w", err)
	}
	what := func() string {
		return fmt.Sprintf("apply %s outcome for target %q to proxy %s", o.Kind, o.Target, o.ProxyID)
	}
	id := o.ProxyID.String()
	tok := callToken()
	for attempt := 0; attempt < maxTargetConflicts; attempt++ {
		if attempt > 2 {
			// Back off a little, at random, so contending writers spread.
			select {
			case <-ctx.Done():
				return nil, 0, fmt.Errorf("redis: %s: %w", what(), ctx.Err())
			case <-time.After(time.Duration(rand.Int64N(int64(attempt) * int64(100*time.Microsecond)))):
			}
		}
		v, err := s.run(ctx, scriptTargetRead, id, o.Target)
		if err != nil {
			return nil, 0, wrap(err, "%s", what())
		}
		arr, _ := v.([]any)
		if len(arr) != 2 {
			return nil, 0, fmt.Errorf("redis: %s: unexpected reply", what())
		}
		nowStr, _ := arr[0].(string)
		old, _ := arr[1].(string)
		now, err := micros(nowStr)
		if err != nil {
			return nil, 0, fmt.Errorf("redis: %s: %w", what(), err)
		}
		at := now
		if !o.At.IsZero() {
			at = o.At.UTC().Truncate(time.Microsecond)
		}
		var st pharox.TargetState
		if old != "" {
			prev, err := decodeTarget(o.ProxyID, o.Target, old)
			if err != nil {
				return nil, 0, fmt.Errorf("redis: %s: %w", what(), err)
			}
			st = *prev
		}
		next := st.Apply(o, p, at)
		rec, err := encodeTarget(&next, tok)
		if err != nil {
			return nil, 0, fmt.Errorf("redis: %s: %w", what(), err)
		}
		v, err = s.run(ctx, scriptTargetWrite, id, o.Target, old, rec,
			optMicrosArg(next.CoolingUntil), optMicrosArg(next.BannedAt), next.IdleSince().UnixMicro(),
			p.MaxTargetsPerProxy, at.Add(-p.EscalateWindow).UnixMicro())
		if err != nil {
			return nil, 0, wrap(err, "%s", what())
		}
		res, _ := v.([]any)
		if len(res) == 2 {
			n, _ := res[1].(int64)
			return &next, int(n), nil
		}
		if len(res) != 1 {
			return nil, 0, fmt.Errorf("redis: %s: unexpected reply", what())
		}
	}
	return nil, 0, fmt.Errorf("redis: %s: %w", what(), errTargetContention)
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
