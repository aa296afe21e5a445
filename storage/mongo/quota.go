package mongo

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
)

// rateWindow is the span a requests_per_minute limit counts acquisitions
// over (see the package documentation: a sliding window, not a bucket).
const rateWindow = time.Minute

// capFullMemory is how long a store instance that found a cap full
// reads the cap's slots before trying to take one.
const capFullMemory = 100 * time.Millisecond

// maxHoldAttempts bounds how often an acquisition tries again to take a
// cap slot or a request-log entry that concurrent acquisitions took
// first; past it the acquisition is refused like one over the limit.
const maxHoldAttempts = 16

// quotaKey names a quota: its subject and the subject's id. Keys order
// like ListQuotas: "consumer:" < "pool:" < "proxy:", then by id.
func quotaKey(subject pharox.QuotaSubject, id string) string { return string(subject) + ":" + id }

// quotaState is a quota as read: its document and the byte shards of its
// generation.
type quotaState struct {
	doc    quotaDoc
	shards []quotaDoc
}

// quota returns the quota with its counters as of at: the counters it
// started from plus every shard's, each counted only in its own day and
// month.
func (st *quotaState) quota(at time.Time) *pharox.Quota {
	d := &st.doc
	q := &pharox.Quota{
		Subject: pharox.QuotaSubject(d.Subject), SubjectID: parseID(d.SubjectID),
		QuotaLimits: pharox.QuotaLimits{
			MaxConcurrentLeases: int(d.MaxLeases), RequestsPerMinute: int(d.RPM),
			BytesPerDay: d.PerDay, BytesPerMonth: d.PerMonth,
		},
		Day: pharox.DayStart(at), Month: pharox.MonthStart(at), UpdatedAt: d.UpdatedAt.UTC(),
	}
	add := func(c *quotaDoc) {
		if c.Day.Equal(q.Day) {
			q.BytesToday += c.Today
		}
		if c.Month.Equal(q.Month) {
			q.BytesThisMonth += c.ThisMonth
		}
	}
	add(d)
	for i := range st.shards {
		if st.shards[i].Gen == d.Gen {
			add(&st.shards[i])
		}
	}
	return q
}

// loadQuotas reads the quotas with the given keys (every quota when keys
// is nil) and their shards in one query. With a pool, the same query also
// returns the allowances of the pool's proxies that are spent at at, whose
// proxies it returns in exhausted.
func (s *Store) loadQuotas(ctx context.Context, keys []string, pool string, at time.Time) (map[string]*quotaState, map[string]bool, error) {
	var f bson.D
	if keys == nil {
		f = bson.D{{Key: "kind", Value: bson.D{{Key: "$in", Value: bson.A{kindQuota, kindShard}}}}}
	} else {
		f = bson.D{{Key: "q", Value: bson.D{{Key: "$in", Value: keys}}}}
	}
	if pool != "" {
		f = bson.D{{Key: "$or", Value: bson.A{f, bson.D{
			{Key: "pool", Value: pool}, {Key: "until", Value: bson.D{{Key: "$gt", Value: at}}},
		}}}}
	}
	var docs []quotaDoc
	if err := s.findAll(ctx, s.quotas, f, nil, &docs); err != nil {
		return nil, nil, err
	}
	states := map[string]*quotaState{}
	state := func(q string) *quotaState {
		st := states[q]
		if st == nil {
			st = &quotaState{}
			states[q] = st
		}
		return st
	}
	var exhausted map[string]bool
	for _, d := range docs {
		switch d.Kind {
		case kindQuota:
			state(d.Q).doc = d
		case kindShard:
			st := state(d.Q)
			st.shards = append(st.shards, d)
		case kindAllow:
			if pool != "" && d.Pool == pool && d.Until != nil && d.Until.After(at) {
				if exhausted == nil {
					exhausted = map[string]bool{}
				}
				exhausted[d.Proxy] = true
			}
		}
	}
	for k, st := range states {
		if st.doc.ID == "" { // shards of a deleted quota
			delete(states, k)
		}
	}
	return states, exhausted, nil
}

// quotaSubject checks that a quota's subject exists and returns, for a
// proxy, its pool.
func (s *Store) quotaSubject(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (pool string, err error) {
	sid := idString(id)
	var coll *mongo.Collection
	var missing error
	switch subject {
	case pharox.QuotaConsumer:
		coll, missing = s.consumers, pharox.ErrConsumerNotFound
	case pharox.QuotaPool:
		coll, missing = s.pools, pharox.ErrPoolNotFound
	default:
		coll, missing = s.proxies, pharox.ErrProxyNotFound
	}
	var d struct {
		Pool string `bson:"pool"`
	}
	err = coll.FindOne(ctx, bson.D{{Key: "_id", Value: sid}}, options.FindOne().SetProjection(bson.D{{Key: "pool", Value: 1}})).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return "", fmt.Errorf("%s %s: %w", subject, id, missing)
	}
	if err != nil {
		return "", wrapErr(err)
	}
	return d.Pool, nil
}

// SetQuota creates or replaces the subject's limits. A new quota gets a
// new generation, byte counters from the usage buckets of the current
// day and month, and cap slots for the subject's active leases.
func (s *Store) SetQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("mongo: set quota: %w", err)
	}
	out, err := s.setQuota(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("mongo: set %s quota %s: %w", q.Subject, q.SubjectID, err)
	}
	return out, nil
}

func (s *Store) setQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error) {
	proxyPool, err := s.quotaSubject(ctx, q.Subject, q.SubjectID)
	if err != nil {
		return nil, err
	}
	sid := idString(q.SubjectID)
	key := quotaKey(q.Subject, sid)
	newCap := int64(q.MaxConcurrentLeases)
	var gen string
	// counting: the quota had no cap, so the subject's active leases get
	// cap slots; lowered: slots at or above the new cap may be held.
	var counting, lowered bool
	for attempt := 0; gen == ""; attempt++ {
		if attempt == 3 {
			return nil, fmt.Errorf("%w: the quota was created and deleted concurrently", pharox.ErrUnavailable)
		}
		t := now()
		var cur quotaDoc
		err := s.quotas.FindOne(ctx, bson.D{{Key: "_id", Value: key}}).Decode(&cur)
		switch {
		case err == nil:
			counting = newCap > 0 && cur.MaxLeases == 0
			lowered = newCap > 0 && (cur.MaxLeases > newCap || cur.Lowered)
			set := bson.D{
				{Key: "max_leases", Value: newCap}, {Key: "rpm", Value: int64(q.RequestsPerMinute)},
				{Key: "per_day", Value: q.BytesPerDay}, {Key: "per_month", Value: q.BytesPerMonth},
				{Key: "lowered", Value: lowered}, {Key: "updated_at", Value: t},
			}
			res, err := s.quotas.UpdateOne(ctx, bson.D{{Key: "_id", Value: key}}, bson.D{{Key: "$set", Value: set}})
			if err != nil {
				return nil, wrapErr(err)
			}
			if res.MatchedCount == 1 {
				gen = cur.Gen
				// A cap that did not go down is checked for slots above
				// it below, and cleared when there are none.
				lowered = newCap > 0 && cur.MaxLeases > newCap
			}
		case errors.Is(err, mongo.ErrNoDocuments):
			d := quotaDoc{
				ID: key, Kind: kindQuota, Q: key, Gen: newGen(), Pool: proxyPool,
				Subject: string(q.Subject), SubjectID: sid, MaxLeases: newCap, RPM: int64(q.RequestsPerMinute),
				PerDay: q.BytesPerDay, PerMonth: q.BytesPerMonth, UpdatedAt: t,
				Day: pharox.DayStart(t), Month: pharox.MonthStart(t),
			}
			// What a deleted quota of the subject may have left behind.
			if err := s.dropQuotaParts(ctx, key); err != nil {
				return nil, err
			}
			if d.Today, d.ThisMonth, err = s.usageBytes(ctx, q.Subject, sid, t); err != nil {
				return nil, err
			}
			_, err := s.quotas.InsertOne(ctx, d)
			if mongo.IsDuplicateKeyError(err) {
				continue // created concurrently: set it as an existing one
			}
			if err != nil {
				return nil, wrapErr(err)
			}
			gen, counting, lowered = d.Gen, newCap > 0, false
		default:
			return nil, wrapErr(err)
		}
	}
	// Acquisitions that start from now on read the quota.
	var pools bson.D
	switch q.Subject {
	case pharox.QuotaConsumer:
		pools = bson.D{}
	case pharox.QuotaPool:
		pools = bson.D{{Key: "_id", Value: sid}}
	default:
		pools = bson.D{{Key: "_id", Value: proxyPool}}
	}
	if _, err := s.pools.UpdateMany(ctx, pools, bson.D{{Key: "$set", Value: bson.D{{Key: "quotas", Value: true}}}}); err != nil {
		return nil, wrapErr(err)
	}
	if counting {
		if err := s.countActiveLeases(ctx, q.Subject, sid, key, gen); err != nil {
			return nil, err
		}
	}
	if newCap > 0 && !lowered {
		// Slots above the cap: the subject had more active leases than a
		// new cap, or a lowered cap's leases are still active.
		over, err := s.capOverflow(ctx, key, gen, newCap)
		if err != nil {
			return nil, err
		}
		if _, err := s.quotas.UpdateOne(ctx, bson.D{{Key: "_id", Value: key}, {Key: "gen", Value: gen}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "lowered", Value: over}}}}); err != nil {
			return nil, wrapErr(err)
		}
	}
	states, _, err := s.loadQuotas(ctx, []string{key}, "", now())
	if err != nil {
		return nil, err
	}
	st := states[key]
	if st == nil {
		return nil, fmt.Errorf("%w: the quota was deleted concurrently", pharox.ErrUnavailable)
	}
	t := now()
	out := st.quota(t)
	if q.Subject == pharox.QuotaProxy {
		// A limit lowered below the counters spends the allowance now; a
		// raised one gives it back.
		if _, err := s.quotas.DeleteMany(ctx, bson.D{{Key: "q", Value: key}, {Key: "kind", Value: kindAllow}}); err != nil {
			return nil, wrapErr(err)
		}
		if err := s.spendAllowance(ctx, &st.doc, out, t); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// spendAllowance records that the proxy of quota d is not leased until its
// allowance resets, when q (its counters at t) says it is used up.
func (s *Store) spendAllowance(ctx context.Context, d *quotaDoc, q *pharox.Quota, t time.Time) error {
	until := q.ExhaustedUntil(t)
	if until.IsZero() {
		return nil
	}
	a := quotaDoc{
		ID: d.Q + "/" + d.Gen + "/allow/" + strconv.FormatInt(until.Unix(), 10), Kind: kindAllow,
		Q: d.Q, Gen: d.Gen, Pool: d.Pool, Proxy: d.SubjectID, Until: &until,
	}
	if _, err := s.quotas.InsertOne(ctx, a); err != nil && !mongo.IsDuplicateKeyError(err) {
		return wrapErr(err)
	}
	return nil
}

// usageBytes sums the subject's usage buckets of t's day and month.
func (s *Store) usageBytes(ctx context.Context, subject pharox.QuotaSubject, id string, t time.Time) (today, month int64, err error) {
	var bs []bucketDoc
	f := bson.D{{Key: string(subject), Value: id}, {Key: "hour", Value: bson.D{{Key: "$gte", Value: pharox.MonthStart(t)}}}}
	if err := s.findAll(ctx, s.usage, f, nil, &bs); err != nil {
		return 0, 0, err
	}
	day := pharox.DayStart(t)
	for _, b := range bs {
		n := b.Sent + b.Received
		month += n
		if !b.Hour.Before(day) {
			today += n
		}
	}
	return today, month, nil
}

// countActiveLeases gives each active, unexpired lease of the subject
// that holds no cap slot of the quota one, so that a cap set on a subject
// with leases counts them. Such slots are not listed on their leases; the
// acquisitions that count them delete them once their lease has ended.
func (s *Store) countActiveLeases(ctx context.Context, subject pharox.QuotaSubject, id, key, gen string) error {
	var active []struct {
		ID string `bson:"_id"`
	}
	f := bson.D{{Key: string(subject), Value: id}, {Key: "expires_at", Value: bson.D{{Key: "$gt", Value: now()}}}}
	cur, err := s.slots.Find(ctx, f, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return wrapErr(err)
	}
	if err := cur.All(ctx, &active); err != nil {
		return wrapErr(err)
	}
	if len(active) == 0 {
		return nil
	}
	var held []capDoc
	if err := s.findAll(ctx, s.caps, bson.D{{Key: "q", Value: key}, {Key: "gen", Value: gen}}, nil, &held); err != nil {
		return err
	}
	used := map[int64]bool{}
	has := map[string]bool{}
	for _, c := range held {
		used[c.N] = true
		has[c.Lease] = true
	}
	n := int64(0)
	for _, l := range active {
		if has[l.ID] {
			continue
		}
		for attempt := 0; ; attempt++ {
			for used[n] {
				n++
			}
			_, err := s.caps.InsertOne(ctx, capDoc{ID: l.ID + "/" + key, Q: key, Gen: gen, N: n, Lease: l.ID})
			used[n] = true
			if err == nil || !mongo.IsDuplicateKeyError(err) {
				if err != nil {
					return wrapErr(err)
				}
				break
			}
			if attempt == maxHoldAttempts {
				return fmt.Errorf("%w: acquisitions kept taking the cap slots being counted", pharox.ErrUnavailable)
			}
			// The number was taken meanwhile, or the lease holds a slot
			// now: look for the latter, else try the next number.
			if err := s.caps.FindOne(ctx, bson.D{{Key: "_id", Value: l.ID + "/" + key}}).Err(); err == nil {
				break
			}
		}
	}
	return nil
}

// capOverflow reports whether a cap slot numbered at or above max is held.
func (s *Store) capOverflow(ctx context.Context, key, gen string, max int64) (bool, error) {
	n, err := s.caps.CountDocuments(ctx, bson.D{{Key: "q", Value: key}, {Key: "gen", Value: gen}, {Key: "n", Value: bson.D{{Key: "$gte", Value: max}}}})
	return n > 0, wrapErr(err)
}

// dropQuotaParts deletes the shards, allowances, cap slots and request log
// of the quota with this key, of every generation.
func (s *Store) dropQuotaParts(ctx context.Context, keys ...string) error {
	in := bson.D{{Key: "q", Value: bson.D{{Key: "$in", Value: keys}}}}
	for _, c := range []*mongo.Collection{s.caps, s.tokens} {
		if _, err := c.DeleteMany(ctx, in); err != nil {
			return wrapErr(err)
		}
	}
	_, err := s.quotas.DeleteMany(ctx, append(in, bson.E{Key: "kind", Value: bson.D{{Key: "$ne", Value: kindQuota}}}))
	return wrapErr(err)
}

// GetQuota returns the subject's quota with its counters as of now.
func (s *Store) GetQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (*pharox.Quota, error) {
	key := quotaKey(subject, idString(id))
	states, _, err := s.loadQuotas(ctx, []string{key}, "", now())
	if err != nil {
		return nil, fmt.Errorf("mongo: get %s quota %s: %w", subject, id, err)
	}
	st := states[key]
	if st == nil {
		return nil, fmt.Errorf("mongo: get %s quota %s: %w", subject, id, pharox.ErrQuotaNotFound)
	}
	return st.quota(now()), nil
}

// ListQuotas returns every quota ordered by subject, then id.
func (s *Store) ListQuotas(ctx context.Context) ([]*pharox.Quota, error) {
	t := now()
	states, _, err := s.loadQuotas(ctx, nil, "", t)
	if err != nil {
		return nil, fmt.Errorf("mongo: list quotas: %w", err)
	}
	keys := make([]string, 0, len(states))
	for k := range states {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]*pharox.Quota, len(keys))
	for i, k := range keys {
		out[i] = states[k].quota(t)
	}
	return out, nil
}

// DeleteQuota removes the subject's quota with its shards, allowances,
// cap slots and request log.
func (s *Store) DeleteQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) error {
	key := quotaKey(subject, idString(id))
	var d quotaDoc
	err := s.quotas.FindOne(ctx, bson.D{{Key: "_id", Value: key}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return fmt.Errorf("mongo: delete %s quota %s: %w", subject, id, pharox.ErrQuotaNotFound)
	}
	if err != nil {
		return fmt.Errorf("mongo: delete %s quota %s: %w", subject, id, wrapErr(err))
	}
	if err := s.deleteQuotas(ctx, []quotaDoc{d}); err != nil {
		return fmt.Errorf("mongo: delete %s quota %s: %w", subject, id, err)
	}
	return nil
}

// deleteQuotas deletes quotas with their parts and clears the quota flag
// of the pools no quota applies to any more.
func (s *Store) deleteQuotas(ctx context.Context, ds []quotaDoc) error {
	if len(ds) == 0 {
		return nil
	}
	keys := make(bson.A, len(ds))
	strKeys := make([]string, len(ds))
	pools := bson.A{}
	consumer := false
	for i, d := range ds {
		keys[i], strKeys[i] = d.Q, d.Q
		switch pharox.QuotaSubject(d.Subject) {
		case pharox.QuotaConsumer:
			consumer = true
		case pharox.QuotaPool:
			pools = append(pools, d.SubjectID)
		default:
			pools = append(pools, d.Pool)
		}
	}
	if _, err := s.quotas.DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: keys}}}}); err != nil {
		return wrapErr(err)
	}
	if err := s.dropQuotaParts(ctx, strKeys...); err != nil {
		return err
	}
	f := bson.D{{Key: "quotas", Value: true}}
	if !consumer {
		f = append(f, bson.E{Key: "_id", Value: bson.D{{Key: "$in", Value: pools}}})
	}
	return s.clearQuotaFlags(ctx, f)
}

// clearQuotaFlags clears the quota flag of the pools matching f that no
// quota applies to. A quota set meanwhile sets the flag again after it
// wrote the quota; the second look here sets back what this call cleared
// while such a quota appeared.
func (s *Store) clearQuotaFlags(ctx context.Context, f bson.D) error {
	var pools []struct {
		ID string `bson:"_id"`
	}
	cur, err := s.pools.Find(ctx, f, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return wrapErr(err)
	}
	if err := cur.All(ctx, &pools); err != nil {
		return wrapErr(err)
	}
	if len(pools) == 0 {
		return nil
	}
	// needed reports the pools some quota applies to (nil: all of them).
	needed := func() (map[string]bool, error) {
		var qs []quotaDoc
		f := bson.D{{Key: "kind", Value: kindQuota}}
		if err := s.findAll(ctx, s.quotas, f, nil, &qs); err != nil {
			return nil, err
		}
		out := map[string]bool{}
		for _, q := range qs {
			switch pharox.QuotaSubject(q.Subject) {
			case pharox.QuotaConsumer:
				return nil, nil
			case pharox.QuotaPool:
				out[q.SubjectID] = true
			default:
				out[q.Pool] = true
			}
		}
		return out, nil
	}
	need, err := needed()
	if err != nil || need == nil {
		return err
	}
	var cleared bson.A
	for _, p := range pools {
		if !need[p.ID] {
			cleared = append(cleared, p.ID)
		}
	}
	if len(cleared) == 0 {
		return nil
	}
	in := bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: cleared}}}}
	if _, err := s.pools.UpdateMany(ctx, in, bson.D{{Key: "$set", Value: bson.D{{Key: "quotas", Value: false}}}}); err != nil {
		return wrapErr(err)
	}
	if need, err = needed(); err != nil {
		return err
	}
	var back bson.A
	for _, id := range cleared {
		if need == nil || need[id.(string)] {
			back = append(back, id)
		}
	}
	if len(back) > 0 {
		in := bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: back}}}}
		if _, err := s.pools.UpdateMany(ctx, in, bson.D{{Key: "$set", Value: bson.D{{Key: "quotas", Value: true}}}}); err != nil {
			return wrapErr(err)
		}
	}
	return nil
}

// flagNewPool sets the quota flag of a pool just created when a consumer
// quota exists. A consumer quota set concurrently flags every pool after
// it is written, so one of the two sees the other.
func (s *Store) flagNewPool(ctx context.Context, id string) error {
	err := s.quotas.FindOne(ctx, bson.D{{Key: "kind", Value: kindQuota}, {Key: "subject", Value: string(pharox.QuotaConsumer)}},
		options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil
	}
	if err != nil {
		return wrapErr(err)
	}
	_, err = s.pools.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{{Key: "$set", Value: bson.D{{Key: "quotas", Value: true}}}})
	return wrapErr(err)
}

// admit enforces the consumer's and then the pool's quota before a proxy
// is chosen, following pharox.Quota.Admit: for each, a cap slot when it
// caps concurrent leases, its byte counters, then a request-log entry
// when it limits requests per minute. A refusal gives back what the
// acquisition took. It also adds the pool's proxies whose allowance is
// spent to the proxies the acquisition skips.
func (a *acquisition) admit(ctx context.Context) error {
	keys := []string{quotaKey(pharox.QuotaConsumer, idString(a.req.ConsumerID)), quotaKey(pharox.QuotaPool, a.pool.ID)}
	states, exhausted, err := a.s.loadQuotas(ctx, keys, a.pool.ID, a.now)
	if err != nil {
		return err
	}
	for id := range exhausted {
		if a.skip == nil {
			a.skip = map[string]bool{}
		}
		a.skip[id] = true
	}
	for _, key := range keys {
		st := states[key]
		if st == nil {
			continue
		}
		q := st.quota(a.now)
		err := func() error {
			if q.MaxConcurrentLeases > 0 {
				if err := a.takeCap(ctx, st, q); err != nil {
					return err
				}
			}
			bytes := *q
			bytes.MaxConcurrentLeases, bytes.RequestsPerMinute = 0, 0
			if err := bytes.Admit(0, a.now); err != nil {
				return err
			}
			if q.RequestsPerMinute > 0 {
				return a.takeEntry(ctx, st, q)
			}
			return nil
		}()
		if err != nil {
			a.giveBack(ctx)
			return err
		}
	}
	return nil
}

// capRefusal is the QuotaError of a subject at its cap.
func capRefusal(q *pharox.Quota) error {
	c := *q
	return c.Admit(c.MaxConcurrentLeases, time.Now())
}

// takeCap takes a cap slot of quota st for the acquisition's lease: an
// insert into the quota_slots collection, whose unique (q, gen, n) index
// admits one holder per slot number 0 to MaxConcurrentLeases-1. A first
// try picks a random number without reading (a cap well above the
// subject's leases takes one write); when it is taken, or when the quota
// may hold slots above the cap (Lowered), the subject's slots are read and
// counted: each is live while its lease is active and unexpired (or the
// acquisition that took it may still be running); an expired lease is
// reclaimed and a slot whose lease ended is deleted.
func (a *acquisition) takeCap(ctx context.Context, st *quotaState, q *pharox.Quota) error {
	s := a.s
	key, gen, max := st.doc.Q, st.doc.Gen, int64(q.MaxConcurrentLeases)
	doc := capDoc{ID: a.id + "/" + key, Q: key, Gen: gen, Lease: a.id}
	// try inserts the slot with number n; taken reports that another
	// holder has the number.
	try := func(n int64) (ok bool, err error) {
		doc.N, doc.At = n, now()
		_, err = s.caps.InsertOne(ctx, doc)
		if err == nil {
			a.capIDs = append(a.capIDs, doc.ID)
			a.caps = append(a.caps, key)
			return true, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return false, wrapErr(err)
		}
		if ferr := s.caps.FindOne(ctx, bson.D{{Key: "_id", Value: doc.ID}}).Err(); ferr == nil {
			// A concurrent try of this lease id holds it: whichever of
			// the two creates the lease, the lease holds this slot.
			a.caps = append(a.caps, key)
			return true, nil
		}
		return false, nil
	}
	// A cap this store instance found full a moment ago is read first:
	// failing inserts would cost the server writes.
	full, _ := s.capsFull.Load(key)
	if at, ok := full.(time.Time); !st.doc.Lowered && (!ok || time.Since(at) > capFullMemory) {
		if ok, err := try(rand.Int64N(max)); ok || err != nil {
			return err
		}
	}
	for range maxHoldAttempts {
		live, used, err := s.liveCaps(ctx, key, gen, max)
		if err != nil {
			return err
		}
		if live >= max {
			s.capsFull.Store(key, time.Now())
			return capRefusal(q)
		}
		n := int64(0)
		for used[n] {
			n++
		}
		ok, err := try(n)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if st.doc.Lowered {
			// Slots above the cap may be held: count again with this one,
			// and give it back when that is one too many (concurrent
			// acquisitions may both give theirs back; none goes over).
			live, _, err := s.liveCaps(ctx, key, gen, max)
			if err != nil {
				return err
			}
			if live > max {
				a.giveBack(ctx)
				return capRefusal(q)
			}
		}
		return nil
	}
	return capRefusal(q)
}

// liveCaps reads the cap slots of a quota and returns how many are live
// and which numbers they hold. Fewer slots than max are all counted live
// (a count below the cap needs no closer look); otherwise their leases
// are read: an expired lease is reclaimed, and a slot whose lease has
// ended is deleted.
func (s *Store) liveCaps(ctx context.Context, key, gen string, max int64) (int64, map[int64]bool, error) {
	var held []capDoc
	if err := s.findAll(ctx, s.caps, bson.D{{Key: "q", Value: key}, {Key: "gen", Value: gen}}, nil, &held); err != nil {
		return 0, nil, err
	}
	used := make(map[int64]bool, len(held))
	if int64(len(held)) < max {
		for _, c := range held {
			used[c.N] = true
		}
		return int64(len(held)), used, nil
	}
	ids := make(bson.A, len(held))
	for i, c := range held {
		ids[i] = c.Lease
	}
	var leases []leaseDoc
	if err := s.findAll(ctx, s.slots, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}, nil, &leases); err != nil {
		return 0, nil, err
	}
	active := make(map[string]*leaseDoc, len(leases))
	for i := range leases {
		active[leases[i].ID] = &leases[i]
	}
	t := now()
	var live int64
	for _, c := range held {
		l := active[c.Lease]
		switch {
		case l != nil && l.ExpiresAt.After(t):
		case l == nil && c.At.Add(insertGuard).After(t):
			// The acquisition that took it has not inserted its lease yet.
		case l != nil:
			if _, _, err := s.end(ctx, l, pharox.LeaseExpired, t, nil); err != nil {
				return 0, nil, err
			}
			fallthrough
		default:
			if _, err := s.caps.DeleteOne(ctx, bson.D{{Key: "_id", Value: c.ID}}); err != nil {
				return 0, nil, wrapErr(err)
			}
			continue
		}
		live++
		used[c.N] = true
	}
	return live, used, nil
}

// takeEntry counts the acquisition against quota st's requests per
// minute: the k-th acquisition so counted inserts entry k of the quota's
// request log, under the _id key/gen/k, and may do so only when entry
// k-RequestsPerMinute is absent or older than a minute. So no minute
// holds more than RequestsPerMinute entries, whatever any number of
// processes do at once: of concurrent inserts of one k one succeeds, and
// the others try k+1 against its own older entry.
func (a *acquisition) takeEntry(ctx context.Context, st *quotaState, q *pharox.Quota) error {
	s := a.s
	key, gen, rpm := st.doc.Q, st.doc.Gen, int64(q.RequestsPerMinute)
	refuse := func(wait time.Duration) error {
		return &pharox.QuotaError{Subject: q.Subject, SubjectID: q.SubjectID, Limit: pharox.LimitRequestsPerMinute, Value: rpm, RetryAfter: max(wait, time.Millisecond)}
	}
	entryID := func(k int64) string { return key + "/" + gen + "/" + strconv.FormatInt(k, 10) }
	k := int64(-1)
	for attempt := range maxHoldAttempts {
		if attempt%4 == 0 {
			var last tokenDoc
			err := s.tokens.FindOne(ctx, bson.D{{Key: "q", Value: key}, {Key: "gen", Value: gen}},
				options.FindOne().SetSort(bson.D{{Key: "k", Value: -1}})).Decode(&last)
			switch {
			case err == nil:
				k = max(k, last.K)
			case !errors.Is(err, mongo.ErrNoDocuments):
				return wrapErr(err)
			}
		}
		k++
		t := now()
		if k >= rpm {
			var old tokenDoc
			err := s.tokens.FindOne(ctx, bson.D{{Key: "_id", Value: entryID(k - rpm)}}).Decode(&old)
			switch {
			case err == nil:
				if until := old.At.Add(rateWindow); until.After(t) {
					return refuse(until.Sub(t))
				}
			case !errors.Is(err, mongo.ErrNoDocuments):
				return wrapErr(err)
			}
		}
		_, err := s.tokens.InsertOne(ctx, tokenDoc{ID: entryID(k), Q: key, Gen: gen, K: k, At: t})
		if mongo.IsDuplicateKeyError(err) {
			continue
		}
		if err != nil {
			return wrapErr(err)
		}
		a.entryIDs = append(a.entryIDs, entryID(k))
		if k%256 == 0 && k > rpm {
			// Entries before k-rpm are never read again.
			if _, err := s.tokens.DeleteMany(ctx, bson.D{{Key: "q", Value: key}, {Key: "gen", Value: gen}, {Key: "k", Value: bson.D{{Key: "$lt", Value: k - rpm}}}}); err != nil {
				return wrapErr(err)
			}
		}
		return nil
	}
	return refuse(time.Second)
}

// giveBack deletes the cap slots and request-log entries the acquisition
// took, when it fails or is refused.
func (a *acquisition) giveBack(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	for _, id := range a.capIDs {
		_, _ = a.s.caps.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	}
	for _, id := range a.entryIDs {
		_, _ = a.s.tokens.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	}
	a.capIDs, a.entryIDs, a.caps = nil, nil, nil
}

// newGen returns a new quota generation: a version 7 uuid, whose text
// orders like its creation time, so a shard of an older generation is
// recognised as older.
func newGen() string { return uuid.Must(uuid.NewV7()).String() }
