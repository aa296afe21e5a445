package mongo

import (
	"cmp"
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
)

// lockCounters locks the counter documents with these ids against this
// store instance's other writes of them (striped, in a fixed order) and
// returns the unlock.
func (s *Store) lockCounters(ids ...string) func() {
	var stripes []int
	for _, id := range ids {
		h := fnv.New32a()
		_, _ = h.Write([]byte(id))
		stripes = append(stripes, int(h.Sum32()%uint32(len(s.counterLocks))))
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	for _, i := range stripes {
		s.counterLocks[i].Lock()
	}
	return func() {
		for _, i := range stripes {
			s.counterLocks[i].Unlock()
		}
	}
}

// count adds a released lease's usage to its hourly bucket and to the
// byte counters of the quotas of its consumer, pool and proxy: one read
// of those quotas and one write of the bucket (at once), then one bulk
// write of the quotas' shards when there are quotas. A proxy quota that
// this release uses up gets its allowance spent.
//
// Buckets and shards are per store instance (writer) and written under
// counterLocks, so no two writes of one document ever overlap: FerretDB
// v1 applies $inc as a read, an addition in Go and a write of the whole
// document, which loses increments when two writers overlap.
func (s *Store) count(ctx context.Context, e *leaseDoc, u pharox.Usage) error {
	at := e.ReleasedAt.UTC()
	keys := []string{
		quotaKey(pharox.QuotaConsumer, e.Consumer), quotaKey(pharox.QuotaPool, e.Pool), quotaKey(pharox.QuotaProxy, e.Proxy),
	}
	var (
		states map[string]*quotaState
		qerr   error
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		states, _, qerr = s.loadQuotas(ctx, keys, "", at)
	}()
	berr := s.addToBucket(ctx, e, u, at)
	<-done
	if berr != nil {
		return berr
	}
	if qerr != nil {
		return qerr
	}
	if len(states) == 0 {
		return nil
	}
	n := u.Bytes()
	day, month := pharox.DayStart(at), pharox.MonthStart(at)
	var models []mongo.WriteModel
	var ids []string
	for _, key := range keys {
		st := states[key]
		if st == nil {
			continue
		}
		id := key + "/" + s.writer
		gen := st.doc.Gen
		ids = append(ids, id)
		models = append(models,
			// A shard of an older generation counts for a deleted quota.
			mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: id}, {Key: "gen", Value: bson.D{{Key: "$lt", Value: gen}}}}).
				SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "gen", Value: gen}, {Key: "day", Value: day}, {Key: "today", Value: int64(0)}, {Key: "month", Value: month}, {Key: "this_month", Value: int64(0)}}}}),
			mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: id}, {Key: "day", Value: bson.D{{Key: "$lt", Value: day}}}}).
				SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "day", Value: day}, {Key: "today", Value: int64(0)}}}}),
			mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: id}, {Key: "month", Value: bson.D{{Key: "$lt", Value: month}}}}).
				SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "month", Value: month}, {Key: "this_month", Value: int64(0)}}}}),
			mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: id}}).SetUpsert(true).
				SetUpdate(bson.D{
					{Key: "$inc", Value: bson.D{{Key: "today", Value: n}, {Key: "this_month", Value: n}}},
					{Key: "$setOnInsert", Value: bson.D{{Key: "kind", Value: kindShard}, {Key: "q", Value: key}, {Key: "gen", Value: gen}, {Key: "day", Value: day}, {Key: "month", Value: month}}},
				}),
		)
	}
	unlock := s.lockCounters(ids...)
	_, err := s.quotas.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(true))
	unlock()
	if err != nil {
		return wrapErr(err)
	}
	if st := states[keys[2]]; st != nil {
		q := st.quota(at).AddBytes(n, at)
		return s.spendAllowance(ctx, &st.doc, &q, at)
	}
	return nil
}

// addToBucket adds a released lease's usage to this store instance's
// bucket of (hour of at, consumer, proxy, pool, target).
func (s *Store) addToBucket(ctx context.Context, e *leaseDoc, u pharox.Usage, at time.Time) error {
	hour := at.Truncate(pharox.UsageBucket)
	id := strings.Join([]string{strconv.FormatInt(hour.Unix(), 10), e.Consumer, e.Proxy, e.Pool, s.writer, e.Target}, "/")
	unlock := s.lockCounters(id)
	defer unlock()
	_, err := s.usage.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{
		{Key: "$inc", Value: bson.D{
			{Key: "leases", Value: int64(1)}, {Key: "requests", Value: u.Requests},
			{Key: "sent", Value: u.BytesSent}, {Key: "received", Value: u.BytesReceived},
		}},
		{Key: "$setOnInsert", Value: bson.D{
			{Key: "hour", Value: hour}, {Key: "consumer", Value: e.Consumer}, {Key: "proxy", Value: e.Proxy},
			{Key: "pool", Value: e.Pool}, {Key: "target", Value: e.Target}, {Key: "writer", Value: s.writer},
		}},
	}, options.UpdateOne().SetUpsert(true))
	return wrapErr(err)
}

// ceilMilli rounds t up to the millisecond, the precision of a BSON date,
// so that "before t" keeps its meaning.
func ceilMilli(t time.Time) time.Time {
	t = t.UTC()
	if r := t.Truncate(time.Millisecond); !r.Equal(t) {
		return r.Add(time.Millisecond)
	}
	return t
}

// QueryUsage totals the buckets q selects, one row per group ordered by
// key: a read of those buckets (one document per bucket and writer).
func (s *Store) QueryUsage(ctx context.Context, q pharox.UsageQuery) ([]pharox.UsageRow, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("mongo: query usage: %w", err)
	}
	f := bson.D{}
	var hour bson.D
	if !q.Since.IsZero() {
		hour = append(hour, bson.E{Key: "$gte", Value: q.Since.UTC().Truncate(pharox.UsageBucket)})
	}
	if !q.Until.IsZero() {
		hour = append(hour, bson.E{Key: "$lt", Value: ceilMilli(q.Until)})
	}
	if hour != nil {
		f = append(f, bson.E{Key: "hour", Value: hour})
	}
	if q.PoolID != [16]byte{} {
		f = append(f, bson.E{Key: "pool", Value: idString(q.PoolID)})
	}
	if q.ConsumerID != [16]byte{} {
		f = append(f, bson.E{Key: "consumer", Value: idString(q.ConsumerID)})
	}
	var bs []bucketDoc
	if err := s.findAll(ctx, s.usage, f, nil, &bs); err != nil {
		return nil, fmt.Errorf("mongo: query usage: %w", err)
	}
	byKey := map[string]*pharox.UsageRow{}
	for _, b := range bs {
		var key string
		switch q.GroupBy {
		case pharox.UsageByConsumer:
			key = b.Consumer
		case pharox.UsageByProxy:
			key = b.Proxy
		case pharox.UsageByPool:
			key = b.Pool
		default:
			key = b.Target
		}
		r := byKey[key]
		if r == nil {
			r = &pharox.UsageRow{Key: key}
			byKey[key] = r
		}
		r.Leases += b.Leases
		r.Requests += b.Requests
		r.BytesSent += b.Sent
		r.BytesReceived += b.Received
	}
	out := make([]pharox.UsageRow, 0, len(byKey))
	for _, r := range byKey {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b pharox.UsageRow) int { return cmp.Compare(a.Key, b.Key) })
	return out, nil
}

// PurgeUsage deletes the buckets that started before the given time and
// returns how many (hour, consumer, proxy, pool, target) buckets went,
// whatever the number of writers that counted each. It also deletes quota
// byte shards of past months, which count for nothing any more.
func (s *Store) PurgeUsage(ctx context.Context, before time.Time) (int, error) {
	f := bson.D{{Key: "hour", Value: bson.D{{Key: "$lt", Value: ceilMilli(before)}}}}
	var bs []bucketDoc
	cur, err := s.usage.Find(ctx, f, options.Find().SetProjection(bson.D{{Key: "writer", Value: 0}, {Key: "leases", Value: 0}, {Key: "requests", Value: 0}, {Key: "sent", Value: 0}, {Key: "received", Value: 0}}))
	if err == nil {
		err = cur.All(ctx, &bs)
	}
	if err != nil {
		return 0, fmt.Errorf("mongo: purge usage: %w", wrapErr(err))
	}
	if len(bs) == 0 {
		return 0, nil
	}
	type bucket struct {
		hour                          int64
		consumer, proxy, pool, target string
	}
	distinct := map[bucket]bool{}
	ids := make(bson.A, len(bs))
	for i, b := range bs {
		distinct[bucket{b.Hour.Unix(), b.Consumer, b.Proxy, b.Pool, b.Target}] = true
		ids[i] = b.ID
	}
	// By id: buckets that a release creates meanwhile stay.
	for lo := 0; lo < len(ids); lo += 1000 {
		in := bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids[lo:min(lo+1000, len(ids))]}}}}
		if _, err := s.usage.DeleteMany(ctx, in); err != nil {
			return 0, fmt.Errorf("mongo: purge usage: %w", wrapErr(err))
		}
	}
	month := pharox.MonthStart(now())
	if _, err := s.quotas.DeleteMany(ctx, bson.D{{Key: "kind", Value: kindShard}, {Key: "month", Value: bson.D{{Key: "$lt", Value: month}}}}); err != nil {
		return 0, fmt.Errorf("mongo: purge usage: %w", wrapErr(err))
	}
	return len(distinct), nil
}
