package mongo

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
)

// Pages of a strategy walk grow from firstPage to maxPage candidates, each
// four times the last: a free candidate near the front costs a small
// read, one deep in the order few reads.
const (
	firstPage = 32
	maxPage   = 2048
)

// maxContendedRounds bounds how often an acquisition walks again after it
// saw free slots but lost every one of them to concurrent acquisitions.
const maxContendedRounds = 24

// reclaimBatch is how many expired leases of a pool an acquisition that
// found no free slot reclaims before it looks again.
const reclaimBatch = 64

// acquisition is the state of one AcquireLease call.
type acquisition struct {
	s        *Store
	req      pharox.AcquireRequest
	pool     *poolDoc
	id       string // the lease id, fixed before the first try
	callerID bool   // the caller chose the id
	query    bson.D // the filter as a query (a superset when inexact)
	// skip holds the ids of the pool's proxies that are never candidates:
	// those cooling down for the request's target and those whose traffic
	// allowance is spent, when the acquisition started.
	skip map[string]bool
	now  time.Time
	// caps are the keys of the quotas whose cap slot the lease holds;
	// capIDs and entryIDs the cap slots and request-log entries this
	// acquisition inserted, given back if it fails.
	caps     []string
	capIDs   []string
	entryIDs []string
}

// AcquireLease takes a slot of a candidate proxy with one insert into the
// slots collection, whose unique (proxy, n) index admits at most
// max_concurrency documents per proxy. See the package documentation.
func (s *Store) AcquireLease(ctx context.Context, req pharox.AcquireRequest) (*pharox.Lease, error) {
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("mongo: acquire: %w", err)
	}
	if req.Filters.HasPredicate() {
		return nil, fmt.Errorf("mongo: acquire: %w: Predicate filters run in Go; this store filters in the database", pharox.ErrUnsupported)
	}
	pool, err := s.findPool(ctx, bson.D{{Key: "name", Value: req.PoolName}}, fmt.Sprintf("%q", req.PoolName))
	if err != nil {
		return nil, fmt.Errorf("mongo: acquire: %w", err)
	}
	if err := s.checkConsumer(ctx, req.ConsumerID); err != nil {
		return nil, fmt.Errorf("mongo: acquire from pool %q: %w", req.PoolName, err)
	}
	a := &acquisition{s: s, req: req, pool: pool, now: now()}
	if req.LeaseID != uuid.Nil {
		a.id, a.callerID = idString(req.LeaseID), true
		d, err := s.findLease(ctx, a.id)
		switch {
		case err == nil:
			return a.existing(d)
		case !errors.Is(err, pharox.ErrLeaseNotFound):
			return nil, fmt.Errorf("mongo: acquire from pool %q: %w", req.PoolName, err)
		}
	} else {
		a.id = idString(uuid.New())
	}
	a.query, _ = filterQuery(req.Filters)
	if req.Target != "" {
		// Read after any ApplyTargetOutcome that returned before this
		// call started, so its cool-down is seen.
		if a.skip, err = s.coolingProxies(ctx, pool.ID, req.Target, a.now); err != nil {
			return nil, fmt.Errorf("mongo: acquire from pool %q: %w", req.PoolName, err)
		}
	}
	if pool.Quotas {
		if err := a.admit(ctx); err != nil {
			return nil, fmt.Errorf("mongo: acquire from pool %q: %w", req.PoolName, err)
		}
	}
	l, err := a.run(ctx)
	if err != nil {
		a.giveBack(ctx)
		var existing *leaseDoc
		if errors.As(err, &existing) {
			return a.existing(existing)
		}
		return nil, fmt.Errorf("mongo: acquire from pool %q: %w", req.PoolName, err)
	}
	return l, nil
}

// Error makes a found lease usable as the error that stops an
// acquisition whose caller-chosen id is taken.
func (d *leaseDoc) Error() string { return "lease " + d.ID + " exists" }

// existing answers an acquisition whose lease id the store already holds.
func (a *acquisition) existing(d *leaseDoc) (*pharox.Lease, error) {
	if d.Pool != a.pool.ID || d.Consumer != idString(a.req.ConsumerID) {
		return nil, fmt.Errorf("mongo: acquire from pool %q: lease id %s is taken by another pool or consumer: %w", a.req.PoolName, d.ID, pharox.ErrAlreadyExists)
	}
	return d.lease(), nil
}

// checkConsumer reports ErrConsumerNotFound for an unknown consumer.
// Consumers are never deleted, so a found one is remembered.
func (s *Store) checkConsumer(ctx context.Context, id uuid.UUID) error {
	key := idString(id)
	if _, ok := s.known.Load(key); ok {
		return nil
	}
	if _, err := s.GetConsumer(ctx, id); err != nil {
		return err
	}
	s.known.Store(key, struct{}{})
	return nil
}

// run takes the slot: the bound proxy first for a sticky request, then
// the strategy's walk, then binds the session key.
func (a *acquisition) run(ctx context.Context) (*pharox.Lease, error) {
	s := a.s
	key := a.req.SessionKey
	var sid string
	var bound *sessionDoc
	if key != "" {
		sid = sessionID(parseID(a.pool.ID), key)
		b, err := s.getSession(ctx, sid)
		if err != nil {
			return nil, err
		}
		if b != nil && b.ExpiresAt.After(a.now) {
			bound = b
			if l, err := a.tryProxy(ctx, b.Proxy); l != nil || err != nil {
				if err == nil {
					err = s.touchSession(ctx, sid, a.now.Add(a.req.SessionTTL))
				}
				return l, err
			}
		}
	}
	l, err := a.choose(ctx)
	if err != nil {
		return nil, err
	}
	if key == "" {
		return l, a.moveCursor(ctx, l)
	}
	newBinding := sessionDoc{ID: sid, Pool: a.pool.ID, Proxy: idString(l.ProxyID), ExpiresAt: a.now.Add(a.req.SessionTTL)}
	if bound != nil {
		// The live binding's proxy could not take the lease: rebind.
		if err := s.rebind(ctx, newBinding); err != nil {
			return nil, err
		}
		return l, a.moveCursor(ctx, l)
	}
	// First use (or the binding died): the insert decides which of
	// concurrent first uses binds the key; the others follow it.
	if _, err := s.sessions.DeleteOne(ctx, bson.D{{Key: "_id", Value: sid}, {Key: "expires_at", Value: bson.D{{Key: "$lte", Value: a.now}}}}); err != nil {
		return nil, wrapErr(err)
	}
	_, err = s.sessions.InsertOne(ctx, newBinding)
	if err == nil {
		return l, a.moveCursor(ctx, l)
	}
	if !mongo.IsDuplicateKeyError(err) {
		return nil, wrapErr(err)
	}
	b, err := s.getSession(ctx, sid)
	if err != nil {
		return nil, err
	}
	if b == nil || b.Proxy == newBinding.Proxy {
		return l, a.moveCursor(ctx, l)
	}
	// Give the slot back and follow the winner. If its proxy cannot take
	// the lease, take one again and rebind.
	if err := a.undo(ctx, idString(l.ProxyID)); err != nil {
		return nil, err
	}
	if l2, err := a.tryProxy(ctx, b.Proxy); l2 != nil || err != nil {
		return l2, err
	}
	l, err = a.choose(ctx)
	if err != nil {
		return nil, err
	}
	newBinding.Proxy = idString(l.ProxyID)
	if err := s.rebind(ctx, newBinding); err != nil {
		return nil, err
	}
	return l, a.moveCursor(ctx, l)
}

// undo deletes the slot this acquisition took on proxy and has not
// returned.
func (a *acquisition) undo(ctx context.Context, proxy string) error {
	res, err := a.s.slots.DeleteOne(context.WithoutCancel(ctx), bson.D{{Key: "_id", Value: a.id}})
	if err != nil {
		return wrapErr(err)
	}
	if res.DeletedCount == 1 {
		return a.s.countLease(ctx, proxy, -1)
	}
	return nil
}

// rebind writes the binding whatever it was (last writer wins).
func (s *Store) rebind(ctx context.Context, b sessionDoc) error {
	q := bson.D{{Key: "_id", Value: b.ID}}
	_, err := s.sessions.ReplaceOne(ctx, q, b, options.Replace().SetUpsert(true))
	if mongo.IsDuplicateKeyError(err) {
		// A concurrent upsert created it first.
		_, err = s.sessions.ReplaceOne(ctx, q, b)
	}
	return wrapErr(err)
}

func (s *Store) getSession(ctx context.Context, sid string) (*sessionDoc, error) {
	var b sessionDoc
	err := s.sessions.FindOne(ctx, bson.D{{Key: "_id", Value: sid}}).Decode(&b)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, wrapErr(err)
	}
	return &b, nil
}

func (s *Store) touchSession(ctx context.Context, sid string, until time.Time) error {
	_, err := s.sessions.UpdateOne(ctx, bson.D{{Key: "_id", Value: sid}}, bson.D{{Key: "$set", Value: bson.D{{Key: "expires_at", Value: until}}}})
	return wrapErr(err)
}

// moveCursor records the round-robin position after a RoundRobin lease
// that was not a sticky hit. The cursor is advisory (fairness, not
// safety): concurrent moves may overwrite each other.
func (a *acquisition) moveCursor(ctx context.Context, l *pharox.Lease) error {
	if a.req.Strategy != pharox.RoundRobin {
		return nil
	}
	_, err := a.s.cursors.UpdateOne(ctx, bson.D{{Key: "_id", Value: a.pool.ID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "after", Value: idString(l.ProxyID)}}}}, options.UpdateOne().SetUpsert(true))
	if mongo.IsDuplicateKeyError(err) {
		// A concurrent first move created the cursor: last writer wins.
		_, err = a.s.cursors.UpdateOne(ctx, bson.D{{Key: "_id", Value: a.pool.ID}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "after", Value: idString(l.ProxyID)}}}})
	}
	return wrapErr(err)
}

// tryProxy takes a slot of the proxy with this id when it is still a
// candidate of the request; nil, nil when it is not or has no free slot.
func (a *acquisition) tryProxy(ctx context.Context, id string) (*pharox.Lease, error) {
	d, err := a.s.getProxyDoc(ctx, id)
	if errors.Is(err, pharox.ErrProxyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if d.Pool != a.pool.ID || d.Rank > 1 || a.skip[d.ID] || !a.req.Filters.Match(d.proxy(0)) {
		return nil, nil
	}
	l, _, err := a.take(ctx, d)
	return l, err
}

// take inserts the slot document of this acquisition's lease for proxy d:
// the lowest slot number no active lease of d holds. The unique (proxy, n)
// index refuses it when a concurrent acquisition took that number first;
// take then reads again. It returns lost when d had a free slot that
// others took, and nil, false when d is full.
func (a *acquisition) take(ctx context.Context, d *proxyDoc) (l *pharox.Lease, lost bool, err error) {
	s := a.s
	doc := leaseDoc{
		ID: a.id, Pool: a.pool.ID, PoolName: a.pool.Name, Proxy: d.ID,
		Consumer: idString(a.req.ConsumerID), ConsumerName: a.req.ConsumerName,
		Status: string(pharox.LeaseActive), SessionKey: a.req.SessionKey, Target: a.req.Target,
		Caps: a.caps,
	}
	for range 4 {
		held := -1 // unknown
		if d.MaxC == 0 {
			doc.N = a.id
		} else {
			n, h, ok, err := s.freeSlot(ctx, d)
			if err != nil || !ok {
				return nil, lost, err
			}
			doc.N, held = n, h
		}
		// Stamped after the read that found the slot free: the lease that
		// held it before was stamped ended before its slot was deleted, so
		// the two never overlap (on one clock).
		doc.AcquiredAt = now()
		doc.ExpiresAt = doc.AcquiredAt.Add(a.req.Duration).Truncate(time.Millisecond)
		if d.MaxC > 0 {
			// Until restamp sets the real expiry: no reclaimer may end
			// the lease while its insert waits and its stamps are stale.
			doc.ExpiresAt = doc.ExpiresAt.Add(insertGuard)
		}
		_, err := s.slots.InsertOne(ctx, doc)
		if err == nil {
			err := atOnce(func() error {
				return s.countLease(ctx, d.ID, 1)
			}, func() error {
				if d.MaxC > 0 {
					return a.restamp(ctx, &doc)
				}
				return nil
			})
			if err != nil {
				return nil, false, err
			}
			return a.taken(ctx, &doc, d, held)
		}
		if !mongo.IsDuplicateKeyError(err) {
			return nil, false, wrapErr(err)
		}
		// The id may be what collided: another try with a caller's id
		// won, or the driver retried this insert after a lost answer and
		// the first attempt had committed.
		if e, ferr := s.findLease(ctx, a.id); ferr == nil {
			if a.callerID || e.Proxy != d.ID {
				return nil, false, e
			}
			if err := s.countLease(ctx, d.ID, 1); err != nil {
				return nil, false, err
			}
			if d.MaxC > 0 {
				if err := a.restamp(ctx, e); err != nil {
					return nil, false, err
				}
			}
			return a.taken(ctx, e, d, -1)
		} else if !errors.Is(ferr, pharox.ErrLeaseNotFound) {
			return nil, false, ferr
		}
		lost = true
	}
	return nil, lost, nil
}

// insertGuard is added to the expiry a slot document is inserted with,
// until restamp writes the real one, so that no reclaimer ends a lease
// whose insert waited past its nominal expiry before it got its real
// stamps. A process that dies between the two holds the slot that much
// longer.
const insertGuard = 30 * time.Second

// restamp moves the lease's AcquiredAt (and ExpiresAt with it) to the
// clock after its insert committed, and drops the insert guard. An insert
// can wait (on a lock of the server) while other acquisitions take and
// free the same slot number; the lease holds the slot only from its
// commit, and its interval must not overlap theirs.
func (a *acquisition) restamp(ctx context.Context, doc *leaseDoc) error {
	t := now()
	if t.Before(doc.AcquiredAt) {
		t = doc.AcquiredAt
	}
	exp := t.Add(a.req.Duration).Truncate(time.Millisecond)
	res, err := a.s.slots.UpdateOne(ctx, bson.D{{Key: "_id", Value: doc.ID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "acquired_at", Value: t}, {Key: "expires_at", Value: exp}}}})
	if err != nil {
		return wrapErr(err)
	}
	if res.MatchedCount == 1 {
		doc.AcquiredAt, doc.ExpiresAt = t, exp
	}
	return nil
}

// taken finishes a successful insert: a caller-chosen id that ended
// meanwhile (an earlier try acquired and ended it) gives the slot back
// and answers with that lease; otherwise the lease gets its proxy
// snapshot: the slots read before the insert plus this one (held), or
// counted now when they were not read.
func (a *acquisition) taken(ctx context.Context, doc *leaseDoc, d *proxyDoc, held int) (*pharox.Lease, bool, error) {
	s := a.s
	if a.callerID {
		var e leaseDoc
		err := s.leases.FindOne(ctx, bson.D{{Key: "_id", Value: a.id}}).Decode(&e)
		if err == nil {
			if uerr := a.undo(ctx, d.ID); uerr != nil {
				return nil, false, uerr
			}
			return nil, false, &e
		}
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return nil, false, wrapErr(err)
		}
	}
	n := held + 1
	if held < 0 {
		c, err := s.proxyLeases(ctx, d.ID)
		if err != nil {
			return nil, false, err
		}
		n = c
	}
	l := doc.lease()
	l.Proxy = d.proxy(n)
	return l, false, nil
}

// freeSlot returns the lowest slot number of d that no active lease
// holds. A proxy whose slots are all held by expired leases has them
// reclaimed first (the "next operation touching the proxy").
func (s *Store) freeSlot(ctx context.Context, d *proxyDoc) (n int64, held int, ok bool, err error) {
	for range 2 {
		var slots []leaseDoc
		if err := s.findAll(ctx, s.slots, bson.D{{Key: "proxy", Value: d.ID}}, nil, &slots); err != nil {
			return 0, 0, false, err
		}
		used := make(map[int64]bool, len(slots))
		var expired []leaseDoc
		t := now()
		for _, h := range slots {
			if n, ok := slotNumber(h.N); ok {
				used[n] = true
			}
			if !h.ExpiresAt.After(t) {
				expired = append(expired, h)
			}
		}
		for n := range d.MaxC {
			if !used[n] {
				return n, len(slots), true, nil
			}
		}
		if len(expired) == 0 {
			return 0, 0, false, nil
		}
		for i := range expired {
			if _, _, err := s.end(ctx, &expired[i], pharox.LeaseExpired, t, nil); err != nil {
				return 0, 0, false, err
			}
		}
	}
	return 0, 0, false, nil
}

func slotNumber(v any) (int64, bool) {
	switch n := v.(type) {
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case float64:
		return int64(n), true
	}
	return 0, false
}

// errTooSelective is the ErrNoProxyAvailable of a filtered walk that
// stopped at its scan budget.
type tooSelectiveError struct{ budget int }

func (e *tooSelectiveError) Error() string {
	return fmt.Sprintf("the filter matched no proxy with a free slot among the first %d candidates in strategy order; it is too selective to serve from a pool this large (narrow the pool or loosen the filter)", e.budget)
}
func (e *tooSelectiveError) Unwrap() error { return pharox.ErrNoProxyAvailable }

// choose walks the strategy's candidates and takes the first free slot.
func (a *acquisition) choose(ctx context.Context) (*pharox.Lease, error) {
	reclaimed := false
	for round := 0; ; round++ {
		var got *pharox.Lease
		lostAny := false
		res, err := a.s.walk(ctx, a.pool, a.req.Filters, a.query, a.req.Strategy, a.skip, func(d *proxyDoc) (bool, error) {
			l, lost, err := a.take(ctx, d)
			if err != nil {
				return false, err
			}
			lostAny = lostAny || lost
			got = l
			return l != nil, nil
		})
		if err != nil {
			return nil, err
		}
		if got != nil {
			return got, nil
		}
		if res.budgetHit {
			return nil, &tooSelectiveError{a.s.cfg.budget}
		}
		if (lostAny || res.sawFree) && round < maxContendedRounds {
			if err := sleepJitter(ctx, round); err != nil {
				return nil, err
			}
			a.now = now()
			continue
		}
		if !reclaimed {
			reclaimed = true
			n, err := a.s.reclaim(ctx, bson.D{{Key: "pool", Value: a.pool.ID}}, reclaimBatch)
			if err != nil {
				return nil, err
			}
			if n > 0 {
				a.now = now()
				continue
			}
		}
		return nil, pharox.ErrNoProxyAvailable
	}
}

func sleepJitter(ctx context.Context, round int) error {
	d := time.Duration(100+rand.IntN(400*(round+1))) * time.Microsecond
	t := time.NewTimer(min(d, 20*time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// walkResult says how a walk ended without a taker's success.
type walkResult struct {
	sawFree   bool // a candidate had a free slot when read
	budgetHit bool // a filtered walk stopped at the scan budget
}

// walk offers the pool's candidates with a free slot, in strategy order,
// to try until it returns true. Candidates are the pool's proxies of rank
// 0 or 1 that the filter's query returns and pharox.Filters.Match
// accepts; each page of them has its slots counted with one read.
func (s *Store) walk(ctx context.Context, pool *poolDoc, f *pharox.Filters, q bson.D, st pharox.Strategy, skip map[string]bool, try func(*proxyDoc) (bool, error)) (walkResult, error) {
	w := &walker{s: s, pool: pool, f: f, skip: skip, try: try, filtered: !f.IsZero()}
	offer := func(p []proxyDoc) (bool, error) { return w.offer(ctx, p) }
	base := append(bson.D{{Key: "pool", Value: pool.ID}, {Key: "rank", Value: bson.D{{Key: "$lte", Value: 1}}}}, q...)
	switch st {
	case pharox.LeastUsed, pharox.Random:
		stop, err := w.loads(ctx, q, st)
		if stop || err != nil || w.res.sawFree {
			return w.res, err
		}
		// The index offered nothing free. Its counts are kept by
		// acquisitions and releases and may be off (see proxy_loads in the
		// package documentation): read the pool through before answering
		// that nothing is free, and repair the counts if that finds one.
		_, err = w.everything(ctx, base, st)
		if err == nil && w.res.sawFree {
			err = s.repairLoads(ctx, pool.ID)
		}
		return w.res, err
	case pharox.RoundRobin:
		var c struct {
			After string `bson:"after"`
		}
		err := s.cursors.FindOne(ctx, bson.D{{Key: "_id", Value: pool.ID}}).Decode(&c)
		if err != nil && !errors.Is(err, mongo.ErrNoDocuments) {
			return w.res, wrapErr(err)
		}
		sort := bson.D{{Key: "_id", Value: 1}}
		if c.After == "" {
			return w.res, s.pages(ctx, base, sort, offer)
		}
		after := append(bson.D{{Key: "_id", Value: bson.D{{Key: "$gt", Value: c.After}}}}, base...)
		stopped := false
		if err := s.pages(ctx, after, sort, func(p []proxyDoc) (bool, error) {
			stop, err := w.offer(ctx, p)
			stopped = stopped || stop
			return stop, err
		}); err != nil || stopped {
			return w.res, err
		}
		upTo := append(bson.D{{Key: "_id", Value: bson.D{{Key: "$lte", Value: c.After}}}}, base...)
		return w.res, s.pages(ctx, upTo, sort, offer)
	default:
		sort := bson.D{{Key: "rank", Value: 1}, {Key: "checked_at", Value: -1}, {Key: "_id", Value: 1}}
		return w.res, s.pages(ctx, base, sort, offer)
	}
}

// walker is the state of one strategy walk.
type walker struct {
	s        *Store
	pool     *poolDoc
	f        *pharox.Filters
	skip     map[string]bool
	try      func(*proxyDoc) (bool, error)
	filtered bool
	examined int
	// poolCounts are the pool's live slots per proxy, read once a walk
	// goes past its first page.
	poolCounts map[string]int
	res        walkResult
}

// offer hands one page of candidates read in strategy order to offerCounted,
// with their live slots counted: the first page's own through the
// (proxy, n) index; a walk past it is in a busy pool and reads the pool's
// live slots once (about as many slots as the walk would read page by
// page) for every later page.
func (w *walker) offer(ctx context.Context, page []proxyDoc) (stop bool, err error) {
	if len(page) == 0 {
		return false, nil
	}
	counts := w.poolCounts
	if counts == nil && w.examined == 0 {
		ids := make(bson.A, len(page))
		for i := range page {
			ids[i] = page[i].ID
		}
		if counts, err = w.s.countSlots(ctx, bson.D{{Key: "proxy", Value: bson.D{{Key: "$in", Value: ids}}}}, true); err != nil {
			return true, err
		}
	} else if counts == nil {
		if w.poolCounts, err = w.s.countSlots(ctx, bson.D{{Key: "pool", Value: w.pool.ID}}, true); err != nil {
			return true, err
		}
		counts = w.poolCounts
	}
	return w.offerCounted(page, counts)
}

// offerCounted hands the candidates of page with a free slot (counts are
// their live slots) to try, in order, until it takes one; stop reports
// that the walk is over.
func (w *walker) offerCounted(page []proxyDoc, counts map[string]int) (stop bool, err error) {
	for i := range page {
		d := &page[i]
		if w.skip[d.ID] {
			continue
		}
		w.examined++
		if w.filtered && w.examined > w.s.cfg.budget {
			w.res.budgetHit = true
			return true, nil
		}
		if d.Rank > 1 || d.MaxC > 0 && int64(counts[d.ID]) >= d.MaxC || !w.f.Match(d.proxy(counts[d.ID])) {
			continue
		}
		w.res.sawFree = true
		ok, err := w.try(d)
		if ok || err != nil {
			return true, err
		}
	}
	return false, nil
}

// everything offers every candidate of the pool, read at once with the
// pool's live slots, in LeastUsed or Random order.
func (w *walker) everything(ctx context.Context, base bson.D, st pharox.Strategy) (bool, error) {
	var all []proxyDoc
	if err := w.s.findAll(ctx, w.s.proxies, base, bson.D{{Key: "_id", Value: 1}}, &all); err != nil {
		return true, err
	}
	counts, err := w.s.countSlots(ctx, bson.D{{Key: "pool", Value: w.pool.ID}}, true)
	if err != nil {
		return true, err
	}
	w.examined = 0
	if st == pharox.Random {
		rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	} else {
		sortLeastUsed(all, counts)
	}
	return w.offerCounted(all, counts)
}

// sortLeastUsed orders proxies like pharox.CompareLeastUsed, with counts
// as their leases.
func sortLeastUsed(ds []proxyDoc, counts map[string]int) {
	slices.SortFunc(ds, func(x, y proxyDoc) int {
		return cmp.Or(cmp.Compare(x.Rank, y.Rank), cmp.Compare(counts[x.ID], counts[y.ID]), cmp.Compare(x.ID, y.ID))
	})
}

// pages reads the documents matching q in sort order, in pages growing
// from firstPage to maxPage, until fn stops.
func (s *Store) pages(ctx context.Context, q, sort bson.D, fn func([]proxyDoc) (bool, error)) error {
	cur, err := s.proxies.Find(ctx, q, options.Find().SetSort(sort).SetBatchSize(firstPage))
	if err != nil {
		return wrapErr(err)
	}
	defer cur.Close(ctx)
	size := firstPage
	page := make([]proxyDoc, 0, size)
	for cur.Next(ctx) {
		var d proxyDoc
		if err := cur.Decode(&d); err != nil {
			return err
		}
		page = append(page, d)
		if len(page) == size {
			if stop, err := fn(page); stop || err != nil {
				return err
			}
			size = min(size*4, maxPage)
			cur.SetBatchSize(int32(size))
			page = make([]proxyDoc, 0, size)
		}
	}
	if err := cur.Err(); err != nil {
		return wrapErr(err)
	}
	_, err = fn(page)
	return err
}

// FindAvailableProxy returns the proxy AcquireLease would choose now,
// without leasing it.
func (s *Store) FindAvailableProxy(ctx context.Context, pool string, filters *pharox.Filters, strategy pharox.Strategy) (*pharox.Proxy, error) {
	strategy = strategy.OrDefault()
	if !strategy.Valid() {
		return nil, fmt.Errorf("mongo: find available proxy: %w: unknown strategy %q", pharox.ErrInvalidArgument, strategy)
	}
	if err := filters.Validate(); err != nil {
		return nil, fmt.Errorf("mongo: find available proxy: %w", err)
	}
	if filters.HasPredicate() {
		return nil, fmt.Errorf("mongo: find available proxy: %w: Predicate filters run in Go; this store filters in the database", pharox.ErrUnsupported)
	}
	pd, err := s.findPool(ctx, bson.D{{Key: "name", Value: pool}}, fmt.Sprintf("%q", pool))
	if err != nil {
		return nil, err
	}
	q, _ := filterQuery(filters)
	var skip map[string]bool
	if pd.Quotas {
		// Proxies whose allowance is spent are not offered either.
		if _, skip, err = s.loadQuotas(ctx, []string{}, pd.ID, now()); err != nil {
			return nil, fmt.Errorf("mongo: find available proxy in pool %q: %w", pool, err)
		}
	}
	var found *proxyDoc
	res, err := s.walk(ctx, pd, filters, q, strategy, skip, func(d *proxyDoc) (bool, error) {
		found = d
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("mongo: find available proxy in pool %q: %w", pool, err)
	}
	if found == nil {
		if res.budgetHit {
			return nil, fmt.Errorf("mongo: find available proxy in pool %q: %w", pool, &tooSelectiveError{s.cfg.budget})
		}
		return nil, fmt.Errorf("mongo: find available proxy in pool %q: %w", pool, pharox.ErrNoProxyAvailable)
	}
	n, err := s.proxyLeases(ctx, found.ID)
	if err != nil {
		return nil, fmt.Errorf("mongo: find available proxy in pool %q: %w", pool, err)
	}
	return found.proxy(n), nil
}

// end ends the active lease d as status at time at, with the holder's
// usage report if any. The insert of its ended record into the leases
// collection decides which of concurrent enders ends it (the record's _id
// is the lease id); the slot document, and the cap slots the lease holds,
// are deleted after, by whoever got there. won reports that this call
// ended it. A crash between the two leaves a slot whose lease has ended;
// it is deleted once it is past ExpiresAt (by the next cleanup, or the
// next acquisition that finds the proxy full), so it holds the slot no
// longer than the lease would have; its cap slots are deleted by the
// first acquisition that counts them.
func (s *Store) end(ctx context.Context, d *leaseDoc, status pharox.LeaseStatus, at time.Time, usage *pharox.Usage) (*leaseDoc, bool, error) {
	e := *d
	e.Status = string(status)
	if at.Before(e.AcquiredAt) {
		at = e.AcquiredAt
	}
	e.ReleasedAt = &at
	if usage != nil {
		e.Usage = &usageDoc{Requests: usage.Requests, Sent: usage.BytesSent, Received: usage.BytesReceived}
	}
	_, err := s.leases.InsertOne(ctx, e)
	won := err == nil
	if err != nil && !mongo.IsDuplicateKeyError(err) {
		return nil, false, wrapErr(err)
	}
	// The slot, the lease count and the cap slots are independent writes:
	// at once.
	err = atOnce(func() error {
		_, err := s.slots.DeleteOne(context.WithoutCancel(ctx), bson.D{{Key: "_id", Value: d.ID}})
		return wrapErr(err)
	}, func() error {
		if !won {
			return nil
		}
		return s.countLease(ctx, d.Proxy, -1)
	}, func() error {
		for _, key := range d.Caps {
			if _, err := s.caps.DeleteOne(context.WithoutCancel(ctx), bson.D{{Key: "_id", Value: d.ID + "/" + key}}); err != nil {
				return wrapErr(err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	if !won {
		var prev leaseDoc
		if err := s.leases.FindOne(ctx, bson.D{{Key: "_id", Value: d.ID}}).Decode(&prev); err == nil {
			return &prev, false, nil
		}
	}
	return &e, won, nil
}

// ReleaseLease ends an active lease as released and frees its slot; a
// usage report is stored on the ended lease and counted (see count). A
// lease past ExpiresAt that nothing reclaimed yet is released.
func (s *Store) ReleaseLease(ctx context.Context, leaseID uuid.UUID, usage *pharox.Usage) (*pharox.Lease, error) {
	id := idString(leaseID)
	var d leaseDoc
	err := s.slots.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		if _, ferr := s.findLease(ctx, id); ferr != nil {
			return nil, fmt.Errorf("mongo: release lease %s: %w", leaseID, ferr)
		}
		return nil, fmt.Errorf("mongo: release lease %s: %w", leaseID, pharox.ErrLeaseNotActive)
	}
	if err != nil {
		return nil, fmt.Errorf("mongo: release lease %s: %w", leaseID, wrapErr(err))
	}
	e, won, err := s.end(ctx, &d, pharox.LeaseReleased, now(), usage)
	if err != nil {
		return nil, fmt.Errorf("mongo: release lease %s: %w", leaseID, err)
	}
	if !won {
		return nil, fmt.Errorf("mongo: release lease %s: %w", leaseID, pharox.ErrLeaseNotActive)
	}
	if usage != nil {
		if err := s.count(ctx, e, *usage); err != nil {
			return nil, fmt.Errorf("mongo: release lease %s: it was released, but counting its usage failed: %w", leaseID, err)
		}
	}
	return e.lease(), nil
}

// RenewLease moves an active, unexpired lease's ExpiresAt to now + d.
func (s *Store) RenewLease(ctx context.Context, leaseID uuid.UUID, d time.Duration) (*pharox.Lease, error) {
	if d <= 0 {
		return nil, fmt.Errorf("mongo: renew lease %s: %w: duration must be positive, got %v", leaseID, pharox.ErrInvalidArgument, d)
	}
	id := idString(leaseID)
	var sd leaseDoc
	err := s.slots.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&sd)
	if errors.Is(err, mongo.ErrNoDocuments) {
		if _, ferr := s.findLease(ctx, id); ferr != nil {
			return nil, fmt.Errorf("mongo: renew lease %s: %w", leaseID, ferr)
		}
		return nil, fmt.Errorf("mongo: renew lease %s: %w", leaseID, pharox.ErrLeaseNotActive)
	}
	if err != nil {
		return nil, fmt.Errorf("mongo: renew lease %s: %w", leaseID, wrapErr(err))
	}
	t := now()
	if !sd.ExpiresAt.After(t) {
		if _, _, err := s.end(ctx, &sd, pharox.LeaseExpired, t, nil); err != nil {
			return nil, fmt.Errorf("mongo: renew lease %s: %w", leaseID, err)
		}
		return nil, fmt.Errorf("mongo: renew lease %s: it expired at %s: %w", leaseID, sd.ExpiresAt.Format(time.RFC3339Nano), pharox.ErrLeaseNotActive)
	}
	until := t.Add(d).Truncate(time.Millisecond)
	res, err := s.slots.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{{Key: "$set", Value: bson.D{{Key: "expires_at", Value: until}}}})
	if err != nil {
		return nil, fmt.Errorf("mongo: renew lease %s: %w", leaseID, wrapErr(err))
	}
	// Ended meanwhile (the slot is gone, or its ended record exists)?
	if res.MatchedCount == 0 {
		return nil, fmt.Errorf("mongo: renew lease %s: %w", leaseID, pharox.ErrLeaseNotActive)
	}
	if n, err := s.leases.CountDocuments(ctx, bson.D{{Key: "_id", Value: id}}); err != nil || n > 0 {
		if err != nil {
			return nil, fmt.Errorf("mongo: renew lease %s: %w", leaseID, wrapErr(err))
		}
		return nil, fmt.Errorf("mongo: renew lease %s: %w", leaseID, pharox.ErrLeaseNotActive)
	}
	sd.ExpiresAt = until
	sd.Status = string(pharox.LeaseActive)
	return sd.lease(), nil
}

// reclaim ends up to limit active leases matching q that are past their
// ExpiresAt, as expired; 0 means no limit.
func (s *Store) reclaim(ctx context.Context, q bson.D, limit int64) (int, error) {
	t := now()
	q = append(slices.Clone(q), bson.E{Key: "expires_at", Value: bson.D{{Key: "$lte", Value: t}}})
	opts := options.Find()
	if limit > 0 {
		opts.SetLimit(limit)
	}
	cur, err := s.slots.Find(ctx, q, opts)
	if err != nil {
		return 0, wrapErr(err)
	}
	var expired []leaseDoc
	if err := cur.All(ctx, &expired); err != nil {
		return 0, wrapErr(err)
	}
	n := 0
	for i := range expired {
		_, won, err := s.end(ctx, &expired[i], pharox.LeaseExpired, t, nil)
		if err != nil {
			return n, err
		}
		if won {
			n++
		}
	}
	return n, nil
}

// CleanupExpiredLeases ends every active lease past its ExpiresAt as
// expired and drops dead session bindings.
func (s *Store) CleanupExpiredLeases(ctx context.Context) (int, error) {
	n, err := s.reclaim(ctx, bson.D{}, 0)
	if err != nil {
		return n, fmt.Errorf("mongo: cleanup expired leases: %w", err)
	}
	if _, err := s.sessions.DeleteMany(ctx, bson.D{{Key: "expires_at", Value: bson.D{{Key: "$lte", Value: now()}}}}); err != nil {
		return n, fmt.Errorf("mongo: cleanup expired leases: %w", wrapErr(err))
	}
	return n, nil
}

// GetPoolStats counts the pool's proxies and active slots.
func (s *Store) GetPoolStats(ctx context.Context, pool string) (*pharox.PoolStats, error) {
	pd, err := s.findPool(ctx, bson.D{{Key: "name", Value: pool}}, fmt.Sprintf("%q", pool))
	if err != nil {
		return nil, err
	}
	cur, err := s.proxies.Find(ctx, bson.D{{Key: "pool", Value: pd.ID}},
		options.Find().SetProjection(bson.D{{Key: "status", Value: 1}, {Key: "maxc", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("mongo: pool stats of %q: %w", pool, wrapErr(err))
	}
	var ds []proxyDoc
	if err := cur.All(ctx, &ds); err != nil {
		return nil, fmt.Errorf("mongo: pool stats of %q: %w", pool, wrapErr(err))
	}
	counts, err := s.countSlots(ctx, bson.D{{Key: "pool", Value: pd.ID}}, false)
	if err != nil {
		return nil, fmt.Errorf("mongo: pool stats of %q: %w", pool, err)
	}
	st := &pharox.PoolStats{PoolName: pool, ByStatus: map[pharox.ProxyStatus]int{}, CollectedAt: now()}
	for i := range ds {
		d := &ds[i]
		n := counts[d.ID]
		status := pharox.ProxyStatus(d.Status)
		st.TotalProxies++
		st.ByStatus[status]++
		st.TotalLeases += n
		if n > 0 {
			st.LeasedProxies++
		}
		if status.Leasable() {
			st.ActiveProxies++
			if d.MaxC == 0 || int64(n) < d.MaxC {
				st.AvailableProxies++
			}
		}
	}
	return st, nil
}

// atOnce runs fns at once and returns the first error.
func atOnce(fns ...func() error) error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns[1:] {
		wg.Go(func() { errs[i+1] = fn() })
	}
	errs[0] = fns[0]()
	wg.Wait()
	return errors.Join(errs...)
}
