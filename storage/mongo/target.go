package mongo

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
)

var _ pharox.TargetStore = (*Store)(nil)

// maxTargetRetries bounds how often ApplyTargetOutcome reads again after a
// concurrent writer changed the entry between its read and its write.
const maxTargetRetries = 16

// targetDoc is a document of the proxy_targets collection: one proxy's
// health for one target. Times are integer microseconds since the epoch.
type targetDoc struct {
	ID             string `bson:"_id"` // proxy id + "/" + target
	Pool           string `bson:"pool"`
	Proxy          string `bson:"proxy"`
	Target         string `bson:"target"`
	FailureStreak  int64  `bson:"failure_streak"`
	Bans           int64  `bson:"bans"`
	CoolingUntil   *int64 `bson:"cooling_until,omitempty"`
	BannedAt       *int64 `bson:"banned_at,omitempty"`
	LastReason     string `bson:"last_reason"`
	LastStatusCode int64  `bson:"last_status_code"`
	LastSuccessAt  *int64 `bson:"last_success_at,omitempty"`
	LastFailureAt  *int64 `bson:"last_failure_at,omitempty"`
	UpdatedAt      int64  `bson:"updated_at"`
	// IdleSince is TargetState.IdleSince, for purges and the cap.
	IdleSince int64 `bson:"idle_since"`
	// V counts writes, for the compare-and-set of ApplyTargetOutcome.
	V int64 `bson:"v"`
}

func targetID(proxy, target string) string { return proxy + "/" + target }

func newTargetDoc(pool string, st *pharox.TargetState, v int64) *targetDoc {
	proxy := idString(st.ProxyID)
	return &targetDoc{
		ID: targetID(proxy, st.Target), Pool: pool, Proxy: proxy, Target: st.Target,
		FailureStreak: int64(st.FailureStreak), Bans: int64(st.Bans),
		CoolingUntil: toMicroPtr(st.CoolingUntil), BannedAt: toMicroPtr(st.BannedAt),
		LastReason: st.LastReason, LastStatusCode: int64(st.LastStatusCode),
		LastSuccessAt: toMicroPtr(st.LastSuccessAt), LastFailureAt: toMicroPtr(st.LastFailureAt),
		UpdatedAt: toMicro(st.UpdatedAt), IdleSince: toMicro(st.IdleSince()), V: v,
	}
}

func (d *targetDoc) state() *pharox.TargetState {
	return &pharox.TargetState{
		ProxyID: parseID(d.Proxy), Target: d.Target,
		FailureStreak: int(d.FailureStreak), Bans: int(d.Bans),
		CoolingUntil: fromMicroPtr(d.CoolingUntil), BannedAt: fromMicroPtr(d.BannedAt),
		LastReason: d.LastReason, LastStatusCode: int(d.LastStatusCode),
		LastSuccessAt: fromMicroPtr(d.LastSuccessAt), LastFailureAt: fromMicroPtr(d.LastFailureAt),
		UpdatedAt: fromMicro(d.UpdatedAt),
	}
}

// ApplyTargetOutcome applies o to its (proxy, target) entry following
// [pharox.TargetState.Apply]: a read, the rule in Go, then a write that
// only matches the version read (an insert for a new entry, refused by
// the _id index when a concurrent one created it first); a lost race reads
// again. A new entry beyond p.MaxTargetsPerProxy evicts the proxy's
// longest-idle ones.
func (s *Store) ApplyTargetOutcome(ctx context.Context, o pharox.TargetOutcome, p pharox.TargetPolicy) (*pharox.TargetState, int, error) {
	if err := o.Validate(); err != nil {
		return nil, 0, fmt.Errorf("mongo: apply target outcome: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, 0, fmt.Errorf("mongo: apply target outcome: %w", err)
	}
	proxy := idString(o.ProxyID)
	pd, err := s.getProxyDoc(ctx, proxy)
	if err != nil {
		return nil, 0, fmt.Errorf("mongo: apply target outcome: %w", err)
	}
	at := time.Now().UTC().Truncate(time.Microsecond)
	if !o.At.IsZero() {
		at = o.At.UTC().Truncate(time.Microsecond)
	}
	id := targetID(proxy, o.Target)
	for range maxTargetRetries {
		var cur targetDoc
		err := s.targets.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&cur)
		found := err == nil
		if err != nil && !errors.Is(err, mongo.ErrNoDocuments) {
			return nil, 0, fmt.Errorf("mongo: apply target outcome: %w", wrapErr(err))
		}
		var old pharox.TargetState
		if found {
			old = *cur.state()
		}
		next := old.Apply(o, p, at)
		if found {
			res, err := s.targets.ReplaceOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "v", Value: cur.V}}, newTargetDoc(pd.Pool, &next, cur.V+1))
			if err != nil {
				return nil, 0, fmt.Errorf("mongo: apply target outcome: %w", wrapErr(err))
			}
			if res.MatchedCount == 0 {
				continue
			}
		} else {
			if err := s.capTargets(ctx, proxy, p.MaxTargetsPerProxy-1); err != nil {
				return nil, 0, fmt.Errorf("mongo: apply target outcome: %w", err)
			}
			_, err := s.targets.InsertOne(ctx, newTargetDoc(pd.Pool, &next, 1))
			if mongo.IsDuplicateKeyError(err) {
				continue
			}
			if err != nil {
				return nil, 0, fmt.Errorf("mongo: apply target outcome: %w", wrapErr(err))
			}
		}
		states, err := s.proxyTargets(ctx, proxy)
		if err != nil {
			return nil, 0, fmt.Errorf("mongo: apply target outcome: %w", err)
		}
		recent := 0
		for _, st := range states {
			if st.Target == next.Target {
				st = &next
			}
			if st.RecentlyBanned(at, p.EscalateWindow) {
				recent++
			}
		}
		return &next, recent, nil
	}
	return nil, 0, fmt.Errorf("mongo: apply target outcome: proxy %s, target %q: %w: too many concurrent writers", o.ProxyID, o.Target, pharox.ErrUnavailable)
}

// capTargets deletes the proxy's longest-idle entries (ties: the smallest
// target) until at most keep remain.
func (s *Store) capTargets(ctx context.Context, proxy string, keep int) error {
	var docs []targetDoc
	if err := s.findAll(ctx, s.targets, bson.D{{Key: "proxy", Value: proxy}}, bson.D{{Key: "idle_since", Value: 1}, {Key: "target", Value: 1}}, &docs); err != nil {
		return err
	}
	for i := 0; len(docs)-i > keep; i++ {
		if _, err := s.targets.DeleteOne(ctx, bson.D{{Key: "_id", Value: docs[i].ID}}); err != nil {
			return wrapErr(err)
		}
	}
	return nil
}

// proxyTargets reads the proxy's entries ordered by target.
func (s *Store) proxyTargets(ctx context.Context, proxy string) ([]*pharox.TargetState, error) {
	var docs []targetDoc
	if err := s.findAll(ctx, s.targets, bson.D{{Key: "proxy", Value: proxy}}, bson.D{{Key: "target", Value: 1}}, &docs); err != nil {
		return nil, err
	}
	out := make([]*pharox.TargetState, len(docs))
	for i := range docs {
		out[i] = docs[i].state()
	}
	return out, nil
}

// coolingProxies returns the ids of the pool's proxies cooling down for
// target at t: one indexed read of those entries only, so its cost grows
// with the proxies skipped, not with the pool.
func (s *Store) coolingProxies(ctx context.Context, pool, target string, t time.Time) (map[string]bool, error) {
	cur, err := s.targets.Find(ctx, bson.D{
		{Key: "pool", Value: pool}, {Key: "target", Value: target},
		{Key: "cooling_until", Value: bson.D{{Key: "$gt", Value: toMicro(t)}}},
	}, options.Find().SetProjection(bson.D{{Key: "proxy", Value: 1}}))
	if err != nil {
		return nil, wrapErr(err)
	}
	var docs []struct {
		Proxy string `bson:"proxy"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return nil, wrapErr(err)
	}
	if len(docs) == 0 {
		return nil, nil
	}
	out := make(map[string]bool, len(docs))
	for _, d := range docs {
		out[d.Proxy] = true
	}
	return out, nil
}

// ListTargetStates returns the proxy's entries ordered by target.
func (s *Store) ListTargetStates(ctx context.Context, proxyID uuid.UUID) ([]*pharox.TargetState, error) {
	proxy := idString(proxyID)
	if _, err := s.getProxyDoc(ctx, proxy); err != nil {
		return nil, fmt.Errorf("mongo: list target states: %w", err)
	}
	out, err := s.proxyTargets(ctx, proxy)
	if err != nil {
		return nil, fmt.Errorf("mongo: list target states: %w", err)
	}
	return out, nil
}

// PoolTargetStats returns per-target health of the pool, ordered by
// target: an admin read of the pool's entries and its proxies' statuses.
func (s *Store) PoolTargetStats(ctx context.Context, poolID uuid.UUID) ([]*pharox.TargetStats, error) {
	pool := idString(poolID)
	if _, err := s.findPool(ctx, bson.D{{Key: "_id", Value: pool}}, poolID.String()); err != nil {
		return nil, fmt.Errorf("mongo: pool target stats: %w", err)
	}
	t := time.Now().UTC()
	var proxies []struct {
		ID     string `bson:"_id"`
		Status string `bson:"status"`
	}
	if err := s.findAll(ctx, s.proxies, bson.D{{Key: "pool", Value: pool}}, bson.D{{Key: "_id", Value: 1}}, &proxies); err != nil {
		return nil, fmt.Errorf("mongo: pool target stats: %w", err)
	}
	leasable := make(map[string]bool, len(proxies))
	nLeasable := 0
	for _, p := range proxies {
		if pharox.ProxyStatus(p.Status).Leasable() {
			leasable[p.ID] = true
			nLeasable++
		}
	}
	var docs []targetDoc
	if err := s.findAll(ctx, s.targets, bson.D{{Key: "pool", Value: pool}}, bson.D{{Key: "target", Value: 1}}, &docs); err != nil {
		return nil, fmt.Errorf("mongo: pool target stats: %w", err)
	}
	hourAgo := t.Add(-time.Hour)
	byTarget := make(map[string]*pharox.TargetStats)
	for i := range docs {
		st := docs[i].state()
		ts := byTarget[st.Target]
		if ts == nil {
			ts = &pharox.TargetStats{Target: st.Target, UsableProxies: nLeasable}
			byTarget[st.Target] = ts
		}
		if st.CoolingAt(t) {
			ts.CoolingProxies++
			if leasable[docs[i].Proxy] {
				ts.UsableProxies--
			}
		}
		if st.BannedAt != nil && !st.BannedAt.Before(hourAgo) {
			ts.BansLastHour++
		}
	}
	out := make([]*pharox.TargetStats, 0, len(byTarget))
	for _, ts := range byTarget {
		out = append(out, ts)
	}
	slices.SortFunc(out, func(a, b *pharox.TargetStats) int { return cmp.Compare(a.Target, b.Target) })
	return out, nil
}

// PurgeTargetStates deletes entries idle since before idleBefore.
func (s *Store) PurgeTargetStates(ctx context.Context, idleBefore time.Time) (int, error) {
	res, err := s.targets.DeleteMany(ctx, bson.D{{Key: "idle_since", Value: bson.D{{Key: "$lt", Value: ceilMicro(idleBefore)}}}})
	if err != nil {
		return 0, fmt.Errorf("mongo: purge target states: %w", wrapErr(err))
	}
	return int(res.DeletedCount), nil
}
