package mysql

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// reclaimScan bounds how many full proxies with expired leases one
// acquisition reclaims before it gives up looking for a slot.
const reclaimScan = 8

// errRetry reports that every free candidate was row-locked by another
// transaction: trying again soon may succeed.
var errRetry = errors.New("mysql: candidates locked")

// errRetryNow reports that the try used a stale cached pool id; the next
// one uses the fresh id.
var errRetryNow = errors.New("mysql: stale pool id")

// errQuotaFound reports that a probe found a quota the try had not locked;
// the next try locks it first (see acquireTx).
var errQuotaFound = errors.New("mysql: quota found by the probe")

// quotaRetries bounds the tries a store runs again at once because a
// probe found a quota: the first one hints the pair, so one more try
// normally locks it; more happen only while other acquisitions of the
// pair, finding it deleted meanwhile, clear the hint.
const quotaRetries = 3

// lockedProxy is a candidate as a locking read returned it: the proxy, the
// clock at the start of that statement and the proxy's freed_at, and the
// answer of the statement's quota probe when it had one.
type lockedProxy struct {
	p       *pharox.Proxy
	clock   time.Time
	freedAt sql.NullTime
	quota   bool
}

// scanLocked reads a candidate; probed says the statement ends with a
// quota probe column (quotaProbeSQL).
func scanLocked(row scanner, probed bool) (*lockedProxy, error) {
	var lp lockedProxy
	extra := []any{&lp.freedAt, &lp.clock}
	if probed {
		extra = append(extra, &lp.quota)
	}
	p, err := scanProxy(row, extra...)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	lp.p, lp.clock = p, utc(lp.clock)
	return &lp, nil
}

// cachedPool returns the pool id the store last saw for name.
func (s *Store) cachedPool(name string) (uuid.UUID, bool) {
	v, ok := s.pools.Load(name)
	if !ok {
		return uuid.Nil, false
	}
	return v.(uuid.UUID), true
}

// AcquireLease atomically chooses a proxy and leases one of its slots, in
// one READ COMMITTED transaction (see the package documentation,
// Acquisition). When every free candidate was locked by concurrent
// transactions it tries again with a short jittered backoff, up to
// WithAcquireAttempts times.
//
// The lease id is chosen before the first try (req.LeaseID, or a fresh
// one), so a try whose COMMIT answer was lost with the connection is
// retried as an idempotent re-acquisition: it finds the lease if the
// commit happened, and takes a slot otherwise.
func (s *Store) AcquireLease(ctx context.Context, req pharox.AcquireRequest) (*pharox.Lease, error) {
	req.Filters = req.Filters.NormalizedClone()
	if err := req.Validate(); err != nil {
		return nil, fail("mysql: acquire: %w", err)
	}
	if req.Filters.HasPredicate() {
		return nil, fail("mysql: acquire: predicate filters cannot run in the database: %w", pharox.ErrUnsupported)
	}
	id := req.LeaseID
	if id == uuid.Nil {
		id = uuid.New()
	}
	backoff := 100 * time.Microsecond
	connRetried := false
	quotaFound := 0
	for attempt := 1; ; attempt++ {
		var lease *pharox.Lease
		err := s.run(ctx, func(tx execer) error {
			var err error
			lease, err = s.acquireTx(ctx, tx, &req, id)
			return err
		})
		switch {
		case err == nil:
			return lease, nil
		case errors.Is(err, errQuotaFound) && quotaFound < quotaRetries:
			quotaFound++
		case errors.Is(err, errRetryNow) && attempt < s.cfg.maxAttempts:
		case errors.Is(err, errRetry) && attempt < s.cfg.maxAttempts:
			if err := sleep(ctx, backoff/2+rand.N(backoff/2+1)); err != nil {
				return nil, fail("mysql: acquire from pool %q: %w", req.PoolName, err)
			}
			backoff = min(backoff*2, 5*time.Millisecond)
		case errors.Is(err, errRetry), errors.Is(err, errRetryNow), errors.Is(err, errQuotaFound):
			return nil, fail("mysql: acquire from pool %q: %w", req.PoolName, pharox.ErrNoProxyAvailable)
		case code(err) == errDupEntry && req.LeaseID != uuid.Nil && attempt < s.cfg.maxAttempts:
			// Another call took a lease with this id first; the next try
			// finds it (existingLease).
		case code(err) == errDupEntry && req.LeaseID == uuid.Nil && !connRetried:
			// A fresh random id collided: impossible in practice, but
			// cheap to handle.
			id = uuid.New()
		case isConnLoss(err) && !connRetried && ctx.Err() == nil:
			connRetried = true
			req.LeaseID = id
		default:
			return nil, fail("mysql: acquire from pool %q: %w", req.PoolName, err)
		}
	}
}

// acquireTx is one try of AcquireLease inside tx.
func (s *Store) acquireTx(ctx context.Context, tx execer, req *pharox.AcquireRequest, id uuid.UUID) (*pharox.Lease, error) {
	// The pool's id and the consumer's existence come from the store's
	// caches when it can: consumers are never deleted, and a cached pool
	// id that went stale (the pool deleted, perhaps re-created) finds no
	// candidate, which sends this try to lookup below. RoundRobin reads
	// its cursor here, so it always looks up.
	poolID, havePool := s.cachedPool(req.PoolName)
	_, haveConsumer := s.consumers.Load(req.ConsumerID)
	looked := false
	var (
		cursor sql.NullString
		// quotas are the consumer's and pool's quotas, locked; nil when
		// neither has one, or before they are locked.
		quotas *quotaLock
		// probed says that a statement of this try has told whether the
		// consumer or the pool has a quota (quotaProbeSQL), and sawQuota
		// its answer.
		probed, sawQuota bool
	)
	lookup := func() error {
		var consumerOK sql.NullInt64
		var id uuid.UUID
		err := tx.QueryRowContext(ctx, s.q(`SELECT pl.id, (SELECT 1 FROM {p}consumers WHERE id = ?), c.last_proxy_id,
			EXISTS (SELECT 1 FROM {p}quotas WHERE subject = 'consumer' AND subject_id = ? OR subject = 'pool' AND subject_id = pl.id)
			FROM {p}pools pl LEFT JOIN {p}pool_cursors c ON c.pool_id = pl.id WHERE pl.name = ?`),
			idArg(req.ConsumerID), idArg(req.ConsumerID), req.PoolName).Scan(&id, &consumerOK, &cursor, &sawQuota)
		if errors.Is(err, sql.ErrNoRows) {
			s.pools.Delete(req.PoolName)
			return pharox.ErrPoolNotFound
		}
		if err != nil {
			return err
		}
		if !consumerOK.Valid {
			return fmt.Errorf("consumer %s: %w", req.ConsumerID, pharox.ErrConsumerNotFound)
		}
		s.consumers.Store(req.ConsumerID, struct{}{})
		s.pools.Store(req.PoolName, id)
		looked, probed = true, true
		if havePool && id != poolID {
			// The cached id was stale: start the try again with this one.
			return errRetryNow
		}
		poolID = id
		return nil
	}
	// lockQuotas locks the consumer's and pool's quotas and applies them
	// (pharox.Quota.Admit, consumer first): a refusal ends the try with
	// the *pharox.QuotaError, before anything was taken.
	lockQuotas := func() error {
		ql, err := s.lockQuotas(ctx, tx, quotaPair{req.ConsumerID, poolID})
		if err != nil {
			return err
		}
		if len(ql.quotas) > 0 {
			quotas = ql
		}
		return ql.admit()
	}
	// quotaSeen handles a probe's answer: a quota found when none is
	// locked ends the try, which is run again at once starting with the
	// quotas (this pair is now hinted): quotas are always locked before
	// any proxy.
	quotaSeen := func() error {
		pair := quotaPair{req.ConsumerID, poolID}
		if !sawQuota {
			s.noteQuotas(pair, false)
			return nil
		}
		if quotas != nil {
			return nil
		}
		s.noteQuotas(pair, true)
		return errQuotaFound
	}
	// A caller-chosen lease id is compared with the pool's id, so that
	// must be fresh too.
	if !havePool || !haveConsumer || req.Strategy == pharox.RoundRobin || req.LeaseID != uuid.Nil {
		havePool = false
		if err := lookup(); err != nil {
			return nil, err
		}
	}
	// An idempotent retry returns its lease before any quota is looked
	// at: it takes nothing.
	if req.LeaseID != uuid.Nil {
		l, err := s.existingLease(ctx, tx, req, poolID)
		if l != nil || err != nil {
			return l, err
		}
	}

	// Quotas, before any proxy: when the lookup saw one, or when the last
	// acquisition for this consumer and pool did, lock them and apply
	// them. A sticky acquisition does so now; any other sends the quota
	// statements ahead of its first candidate read, in the same round
	// trip, and applies them before it uses the candidate (a refusal
	// rolls back the candidate's lock with the rest). Otherwise the first
	// statement that locks a proxy probes for quotas too, and one found
	// there sends the try back here (see quotaSeen).
	var (
		lead    *stmtLead
		pending *quotaLock
	)
	wantQuotas := looked && sawQuota || !looked && s.quotaHinted(quotaPair{req.ConsumerID, poolID})
	switch {
	case wantQuotas && req.SessionKey != "":
		if err := lockQuotas(); err != nil {
			return nil, err
		}
	case wantQuotas:
		pending = &quotaLock{}
		lead = s.quotaLead(quotaPair{req.ConsumerID, poolID}, pending)
	case looked:
		s.noteQuotas(quotaPair{req.ConsumerID, poolID}, false)
	}
	probe := uuid.Nil
	if !probed && !wantQuotas {
		probe = req.ConsumerID
	}

	var (
		chosen    *lockedProxy
		keyHash   []byte
		stickyHit bool
		err       error
	)
	if req.SessionKey != "" {
		h := sha256.Sum256([]byte(req.SessionKey))
		keyHash = h[:]
		chosen, err = s.lockSession(ctx, tx, poolID, keyHash, req.Filters, req.Target, probe, &sawQuota)
		if err != nil {
			return nil, err
		}
		if probe != uuid.Nil {
			probe, probed = uuid.Nil, true
			if err := quotaSeen(); err != nil {
				return nil, err
			}
		}
		stickyHit = chosen != nil
	}
	if chosen == nil {
		chosen, err = s.choose(ctx, tx, poolID, req.Filters, req.Target, req.Strategy, cursor.String, true, probe, lead)
		if err != nil {
			return nil, err
		}
		if pending != nil {
			if err := s.finishQuotas(quotaPair{req.ConsumerID, poolID}, pending); err != nil {
				return nil, err
			}
			if len(pending.quotas) > 0 {
				quotas = pending
			}
			if err := pending.admit(); err != nil {
				return nil, err
			}
		}
		if probe != uuid.Nil && chosen != nil {
			probed, sawQuota = true, chosen.quota
			if err := quotaSeen(); err != nil {
				return nil, err
			}
		}
	}
	if chosen == nil && !looked {
		// Nothing free under a cached pool id: make sure the pool and the
		// id are still what the cache says before answering (and whether
		// a quota applies, which comes first).
		if err := lookup(); err != nil {
			return nil, err
		}
		if err := quotaSeen(); err != nil {
			return nil, err
		}
	}
	if chosen == nil {
		// No proxy has a free slot: reclaim expired leases of full
		// proxies, then look again.
		n, err := s.reclaimFull(ctx, tx, poolID)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			chosen, err = s.choose(ctx, tx, poolID, req.Filters, req.Target, req.Strategy, cursor.String, true, uuid.Nil, nil)
			if err != nil {
				return nil, err
			}
		}
	}
	if chosen == nil {
		// Did a candidate exist that others held locked? A non-locking
		// read sees the newest committed rows and waits for nothing.
		if !s.naive {
			p, err := s.choose(ctx, tx, poolID, req.Filters, req.Target, req.Strategy, cursor.String, false, uuid.Nil, nil)
			if err != nil {
				return nil, err
			}
			if p != nil {
				return nil, errRetry
			}
		}
		return nil, pharox.ErrNoProxyAvailable
	}

	// A proxy is taken: the acquisition takes its request tokens.
	if quotas != nil {
		if err := s.takeTokens(ctx, tx, quotas); err != nil {
			return nil, err
		}
	}
	// The slot, under the row lock: the locking read saw it free, and the
	// proxies_slots CHECK fails the transaction should the count ever pass
	// max_concurrency. This and the writes below travel with the COMMIT.
	if err := tx.later(ctx, s.q(`UPDATE {p}proxies SET current_leases = current_leases + 1, rnd = ? WHERE id = ?`),
		rand.Int64(), idArg(chosen.p.ID)); err != nil {
		return nil, err
	}
	// The lease starts no earlier than the end of any lease that freed a
	// slot of this proxy (freed_at, read under the row lock), so it never
	// overlaps the lease whose slot it takes, although the clock was read
	// when the locking statement started.
	at := chosen.clock
	if chosen.freedAt.Valid && chosen.freedAt.Time.After(at) {
		at = utc(chosen.freedAt.Time)
	}
	l := &pharox.Lease{
		ID: id, ProxyID: chosen.p.ID, ConsumerID: req.ConsumerID, ConsumerName: req.ConsumerName,
		PoolID: poolID, PoolName: req.PoolName, Status: pharox.LeaseActive,
		AcquiredAt: at, ExpiresAt: micro(at.Add(req.Duration)), SessionKey: req.SessionKey, Target: req.Target,
	}
	var key any
	if req.SessionKey != "" {
		key = req.SessionKey
	}
	// A lease id taken since existingLease looked fails the commit with a
	// duplicate key; AcquireLease then tries again and returns that lease.
	if err := tx.later(ctx, s.q(`INSERT INTO {p}leases (id, proxy_id, pool_id, pool_name, consumer_id,
		consumer_name, status, acquired_at, expires_at, session_key, target)
		VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?)`),
		idArg(l.ID), idArg(l.ProxyID), idArg(poolID), l.PoolName, idArg(l.ConsumerID),
		l.ConsumerName, l.AcquiredAt, l.ExpiresAt, key, l.Target); err != nil {
		return nil, err
	}
	if req.SessionKey != "" {
		if err := tx.later(ctx, s.q(`UPDATE {p}sessions SET proxy_id = ?, expires_at = ?
			WHERE pool_id = ? AND key_hash = ?`),
			idArg(chosen.p.ID), micro(at.Add(req.SessionTTL)), idArg(poolID), keyHash); err != nil {
			return nil, err
		}
	}
	// A sticky hit is not a round-robin turn; only a fresh choice moves
	// the cursor, and only when no concurrent round-robin acquisition holds
	// it (that one is moving it): sequential acquisitions rotate exactly,
	// concurrent ones never wait for each other.
	if req.Strategy == pharox.RoundRobin && !stickyHit {
		var one int
		err := tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM {p}pool_cursors WHERE pool_id = ? FOR UPDATE SKIP LOCKED`), idArg(poolID)).Scan(&one)
		switch {
		case err == nil:
			if err := tx.later(ctx, s.q(`UPDATE {p}pool_cursors SET last_proxy_id = ? WHERE pool_id = ?`),
				idArg(chosen.p.ID), idArg(poolID)); err != nil {
				return nil, err
			}
		case !errors.Is(err, sql.ErrNoRows):
			return nil, err
		}
	}
	snap := chosen.p
	snap.CurrentLeases++
	l.Proxy = snap
	return l, nil
}

// existingLease handles AcquireRequest.LeaseID: the lease with that id as
// it is now when the same consumer took it from the same pool, or
// ErrAlreadyExists; nil when there is none.
func (s *Store) existingLease(ctx context.Context, tx execer, req *pharox.AcquireRequest, poolID uuid.UUID) (*pharox.Lease, error) {
	l, err := scanLease(tx.QueryRowContext(ctx, s.q(`SELECT `+leaseCols+` FROM {p}leases WHERE id = ?`), idArg(req.LeaseID)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if l.PoolID != poolID || l.ConsumerID != req.ConsumerID {
		return nil, fmt.Errorf("lease id %s is taken by another pool or consumer: %w", req.LeaseID, pharox.ErrAlreadyExists)
	}
	p, err := scanProxy(tx.QueryRowContext(ctx, s.q(`SELECT `+proxyCols+` FROM {p}proxies WHERE id = ?`), idArg(l.ProxyID)))
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	l.Proxy = p
	return l, nil
}

// lockSession locks the (pool, key) binding, creating its row if needed, so
// that concurrent first uses of one key queue here and all end on the proxy
// the first one binds. It returns the bound proxy, locked, when the binding
// is live and the proxy is still a candidate with a free slot (after
// reclaiming its expired leases) that is not cooling down for target (""
// for none) and within its traffic allowance; nil otherwise, and the key
// is then bound anew. With a probe consumer (not uuid.Nil) it first tells
// in *sawQuota whether that consumer or the pool has a quota, and goes no
// further when one has: quotas are locked before any proxy.
func (s *Store) lockSession(ctx context.Context, tx execer, poolID uuid.UUID, keyHash []byte, f *pharox.Filters, target string,
	probe uuid.UUID, sawQuota *bool) (*lockedProxy, error) {
	// INSERT ... ON DUPLICATE KEY UPDATE takes the row's exclusive lock
	// whether the row existed or not; a no-op update changes nothing.
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO {p}sessions (pool_id, key_hash, proxy_id, expires_at)
		VALUES (?, ?, NULL, '1970-01-01 00:00:01') ON DUPLICATE KEY UPDATE pool_id = pool_id`),
		idArg(poolID), keyHash); err != nil {
		return nil, err
	}
	var (
		bound sql.NullString
		live  bool
		err   error
	)
	if probe != uuid.Nil {
		err = tx.QueryRowContext(ctx, s.q(`SELECT proxy_id, expires_at > UTC_TIMESTAMP(6), `+quotaProbeSQL+` FROM {p}sessions
			WHERE pool_id = ? AND key_hash = ?`), idArg(probe), idArg(poolID), idArg(poolID), keyHash).Scan(&bound, &live, sawQuota)
		if err == nil && *sawQuota {
			return nil, nil
		}
	} else {
		err = tx.QueryRowContext(ctx, s.q(`SELECT proxy_id, expires_at > UTC_TIMESTAMP(6) FROM {p}sessions
			WHERE pool_id = ? AND key_hash = ?`), idArg(poolID), keyHash).Scan(&bound, &live)
	}
	if err != nil {
		return nil, err
	}
	if !live || !bound.Valid {
		return nil, nil
	}
	// The bound proxy is waited for, not skipped: it is the one wanted.
	// Lock order everywhere is quotas, session, proxy, lease, cursor.
	//
	// The statement's clock is read when it starts, before the lock wait,
	// and becomes the lease's AcquiredAt; so the cool-down for target and
	// the traffic allowance are judged in the same statement, at that
	// clock, on the row as it is once the lock is granted. (Checking the
	// cool-down in a later statement, at a later clock, let a lease start
	// inside a cool-down that had ended while the lock was awaited.)
	lockRow := func() (*lockedProxy, error) {
		args := []any{bound.String, idArg(poolID)}
		cond := withinAllowanceSQL("p")
		if target != "" {
			cond += ` AND ` + s.notCoolingSQL("p")
			args = append(args, target)
		}
		return scanLocked(tx.QueryRowContext(ctx, s.q(`SELECT `+prefixed("p", proxyCols)+`, p.freed_at, UTC_TIMESTAMP(6) FROM {p}proxies p
			WHERE p.id = ? AND p.pool_id = ? AND `+cond+` FOR UPDATE`), args...), false)
	}
	lp, err := lockRow()
	if lp == nil || err != nil {
		return nil, err
	}
	if !lp.p.Status.Leasable() || !f.Match(lp.p) {
		return nil, nil
	}
	if !lp.p.HasFreeSlot() {
		n, err := s.reclaimLocked(ctx, tx, lp.p.ID)
		if err != nil || n == 0 {
			return nil, err
		}
		if lp, err = lockRow(); lp == nil || err != nil || !lp.p.HasFreeSlot() {
			return nil, err
		}
	}
	return lp, nil
}

// choose returns the first candidate of the pool in strategy order, locked
// FOR UPDATE SKIP LOCKED when lock is set, or nil. Each strategy walks its
// own index (FORCE INDEX: the optimizer has no reason to know the LIMIT 1
// walk beats a filter index) from the pool's free-slot range, so the cost
// does not grow with the pool. With a target ("" for none) the walk
// passes over proxies cooling down for it, one primary-key probe of
// proxy_targets per proxy it reaches (notCoolingSQL). It passes over
// proxies past their traffic allowance too, a column of the row it reads.
// With a probe consumer (not uuid.Nil) the statement also tells, in the
// candidate's quota field, whether that consumer or the pool has a quota.
// A lead's statements travel ahead of the first candidate read, in its
// round trip.
func (s *Store) choose(ctx context.Context, tx execer, poolID uuid.UUID, f *pharox.Filters, target string, st pharox.Strategy, cursor string, lock bool, probe uuid.UUID, lead *stmtLead) (*lockedProxy, error) {
	var args []any
	args = append(args, idArg(poolID))
	filter := filterSQL(f, "p", &args)
	if target != "" {
		filter = "(" + filter + " AND " + s.notCoolingSQL("p") + ")"
		args = append(args, target)
	}
	plan := plans[st.OrDefault()]
	probed := probe != uuid.Nil
	sel := func(extra string, extraArgs ...any) (*lockedProxy, error) {
		var a []any
		if probed {
			a = append(a, idArg(probe), idArg(poolID))
		}
		a = append(append(append(a, args[0]), extraArgs...), args[1:]...)
		query := s.candidateSQL(plan, extra, filter, lock, probed)
		if lead == nil {
			return scanLocked(tx.QueryRowContext(ctx, query, a...), probed)
		}
		l := lead
		lead = nil
		var lp *lockedProxy
		err := queryEach(ctx, tx, append(l.queries, query), append(l.args, a), func(i int, rows *sql.Rows) error {
			if i < len(l.queries) {
				return l.read(i, rows)
			}
			if !rows.Next() {
				return nil
			}
			var err error
			lp, err = scanLocked(rows, probed)
			return err
		})
		return lp, err
	}
	switch st.OrDefault() {
	case pharox.RoundRobin:
		if cursor != "" {
			p, err := sel(" AND p.id > ?", cursor)
			if p != nil || err != nil {
				return p, err
			}
		}
		return sel("") // wrap around
	case pharox.Random:
		// Each proxy's rnd is a uniform draw, redrawn whenever it is
		// leased; the first key at or after a uniform pivot picks every
		// candidate with the same probability, through the index.
		p, err := sel(" AND p.rnd >= ?", rand.Int64())
		if p != nil || err != nil {
			return p, err
		}
		return sel("") // wrap around
	default:
		return sel("")
	}
}

// notCoolingSQL is the condition that proxy p is not cooling down for the
// target in its one parameter (see pharox.TargetState): a dependent
// subquery, a primary-key lookup of proxy_targets run for each proxy the
// walk reaches. It is a scalar subquery, never NULL, rather than NOT
// EXISTS, which MariaDB turns into a materialized set of every entry of
// the target: the walk must cost the proxies it passes, not the target's
// entries. A locking read does not lock the rows its subqueries read.
func (s *Store) notCoolingSQL(p string) string {
	return s.q(`COALESCE((SELECT t.cooling_until > UTC_TIMESTAMP(6) FROM {p}proxy_targets t WHERE t.proxy_id = ` + p + `.id AND t.target = ?), 0) = 0`)
}

// strategyPlan is the index a strategy walks and the order it walks it in.
type strategyPlan struct{ index, order string }

// plans mirror pharox.CompareFirstAvailable (MySQL sorts NULL first
// ascending, so last under DESC) and pharox.CompareLeastUsed.
var plans = map[pharox.Strategy]strategyPlan{
	pharox.FirstAvailable: {"first_available", "p.status_rank, p.checked_at DESC, p.id"},
	pharox.LeastUsed:      {"least_used", "p.status_rank, p.current_leases, p.id"},
	pharox.RoundRobin:     {"round_robin", "p.id"},
	pharox.Random:         {"random", "p.rnd"},
}

// candidateSQL is the statement that reads the first candidate of a plan:
// parameters are the consumer and pool ids of the quota probe when probe
// is set (quotaProbeSQL), the pool id, then those of extra, then the
// filter's. FORCE INDEX pins the plan's index: the walk stops at the first
// row that passes the filter, which the optimizer cannot know beats a
// filter index.
func (s *Store) candidateSQL(plan strategyPlan, extra, filter string, lock, probe bool) string {
	suffix := " LIMIT 1"
	if lock {
		if s.naive {
			suffix += " FOR UPDATE"
		} else {
			suffix += " FOR UPDATE SKIP LOCKED"
		}
	}
	cols := prefixed("p", proxyCols) + `, p.freed_at, UTC_TIMESTAMP(6)`
	if probe {
		cols += `, ` + quotaProbeSQL
	}
	return s.q(`SELECT ` + cols + ` FROM {p}proxies p FORCE INDEX ({p}proxies_` + plan.index + `)
		WHERE p.pool_id = ? AND p.has_free_slot = 1` + extra + ` AND ` + withinAllowanceSQL("p") + ` AND ` + filter + ` ORDER BY ` + plan.order + suffix)
}

// withinAllowanceSQL is the condition that proxy p is within its traffic
// allowance: allowance_until, set while its quota's bytes are used up, is
// NULL or past.
func withinAllowanceSQL(p string) string {
	return `(` + p + `.allowance_until IS NULL OR ` + p + `.allowance_until <= UTC_TIMESTAMP(6))`
}

// reclaimFull ends the expired leases of up to reclaimScan full proxies of
// the pool, skipping proxies other transactions hold, and returns how many
// leases it ended. The proxies stay locked by tx.
func (s *Store) reclaimFull(ctx context.Context, tx execer, poolID uuid.UUID) (int, error) {
	rows, err := tx.QueryContext(ctx, s.q(`SELECT DISTINCT proxy_id FROM {p}leases
		WHERE pool_id = ? AND status = 'active' AND expires_at <= UTC_TIMESTAMP(6) LIMIT `+fmt.Sprint(reclaimScan)), idArg(poolID))
	if err != nil {
		return 0, err
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	total := 0
	for _, id := range ids {
		var got string
		err := tx.QueryRowContext(ctx, s.q(`SELECT id FROM {p}proxies WHERE id = ? FOR UPDATE SKIP LOCKED`), id).Scan(&got)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return total, err
		}
		pid, _ := uuid.Parse(id)
		n, err := s.reclaimLocked(ctx, tx, pid)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// reclaimLocked ends the expired leases of a proxy tx holds locked and
// frees their slots. Leases other transactions hold (a release or a
// cleanup ending them right now) are skipped: they are theirs to end.
func (s *Store) reclaimLocked(ctx context.Context, tx execer, proxyID uuid.UUID) (int, error) {
	rows, err := tx.QueryContext(ctx, s.q(`SELECT id FROM {p}leases
		WHERE proxy_id = ? AND status = 'active' AND expires_at <= UTC_TIMESTAMP(6) FOR UPDATE SKIP LOCKED`), idArg(proxyID))
	if err != nil {
		return 0, err
	}
	var ids []any
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(ids) == 0 {
		return 0, err
	}
	if err := s.expireLeases(ctx, tx, proxyID, ids); err != nil {
		return 0, err
	}
	return len(ids), nil
}

// expireLeases ends the given active leases of one proxy as expired, all
// locked by tx, and frees their slots. ReleasedAt of an expired lease is
// its ExpiresAt: the moment it stopped holding the slot.
func (s *Store) expireLeases(ctx context.Context, tx execer, proxyID uuid.UUID, ids []any) error {
	in := placeholders(len(ids))
	res, err := tx.ExecContext(ctx, s.q(`UPDATE {p}leases SET status = 'expired', released_at = expires_at
		WHERE id IN (`+in+`) AND status = 'active'`), ids...)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if int(n) != len(ids) {
		return fmt.Errorf("expired %d of %d locked leases of proxy %s", n, len(ids), proxyID)
	}
	// freed_at moves to now, past the ExpiresAt of every lease ended here.
	_, err = tx.ExecContext(ctx, s.q(`UPDATE {p}proxies SET current_leases = current_leases - ?,
		freed_at = GREATEST(COALESCE(freed_at, UTC_TIMESTAMP(6)), UTC_TIMESTAMP(6)) WHERE id = ?`), n, idArg(proxyID))
	return err
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// FindAvailableProxy returns the proxy AcquireLease would choose now,
// without locking or leasing it and without moving the round-robin cursor.
// A full proxy holding an expired lease counts, as AcquireLease would
// reclaim that lease.
func (s *Store) FindAvailableProxy(ctx context.Context, pool string, filters *pharox.Filters, strategy pharox.Strategy) (*pharox.Proxy, error) {
	if !strategy.Valid() {
		return nil, fmt.Errorf("%w: unknown strategy %q", pharox.ErrInvalidArgument, strategy)
	}
	filters = filters.NormalizedClone()
	if err := filters.Validate(); err != nil {
		return nil, fail("mysql: find proxy: %w", err)
	}
	if filters.HasPredicate() {
		return nil, fail("mysql: find proxy: predicate filters cannot run in the database: %w", pharox.ErrUnsupported)
	}
	var out *pharox.Proxy
	err := s.run(ctx, func(tx execer) error {
		var (
			poolID uuid.UUID
			cursor sql.NullString
		)
		err := tx.QueryRowContext(ctx, s.q(`SELECT pl.id, c.last_proxy_id FROM {p}pools pl
			LEFT JOIN {p}pool_cursors c ON c.pool_id = pl.id WHERE pl.name = ?`), pool).Scan(&poolID, &cursor)
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrPoolNotFound
		}
		if err != nil {
			return err
		}
		lp, err := s.choose(ctx, tx, poolID, filters, "", strategy, cursor.String, false, uuid.Nil, nil)
		if lp != nil || err != nil {
			if lp != nil {
				out = lp.p
			}
			return err
		}
		args := []any{idArg(poolID)}
		filter := filterSQL(filters, "p", &args)
		p, err := scanProxy(tx.QueryRowContext(ctx, s.q(`SELECT `+proxyCols+` FROM {p}proxies p
			WHERE p.pool_id = ? AND p.status IN ('active', 'slow') AND `+withinAllowanceSQL("p")+` AND `+filter+`
			AND EXISTS (SELECT 1 FROM {p}leases x WHERE x.proxy_id = p.id AND x.status = 'active' AND x.expires_at <= UTC_TIMESTAMP(6))
			ORDER BY p.status_rank, p.checked_at DESC, p.id LIMIT 1`), args...))
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrNoProxyAvailable
		}
		out = p
		return err
	})
	if err != nil {
		return nil, fail("mysql: find proxy in pool %q: %w", pool, err)
	}
	return out, nil
}

// ReleaseLease ends an active lease as released and frees its slot. A lease
// past its ExpiresAt that nothing has reclaimed yet is released: it still
// held its slot. A usage report is stored on the lease and counted in the
// same transaction (see countUsage). A try whose COMMIT answer was lost
// with the connection is tried again; finding the lease then released by
// that very try, it returns it (and counts nothing twice).
func (s *Store) ReleaseLease(ctx context.Context, leaseID uuid.UUID, usage *pharox.Usage) (*pharox.Lease, error) {
	if usage != nil {
		if err := usage.Validate(); err != nil {
			return nil, fail("mysql: release lease %s: %w", leaseID, err)
		}
		u := *usage
		usage = &u
	}
	l, err := s.releaseOnce(ctx, leaseID, usage)
	if err != nil && isConnLoss(err) && ctx.Err() == nil {
		var again *pharox.Lease
		again, err2 := s.releaseOnce(ctx, leaseID, usage)
		switch {
		case err2 == nil:
			l, err = again, nil
		case errors.Is(err2, pharox.ErrLeaseNotActive):
			if got, gerr := s.GetLease(ctx, leaseID); gerr == nil && got.Status == pharox.LeaseReleased {
				l, err = got, nil
			}
		}
	}
	if err != nil {
		return nil, fail("mysql: release lease %s: %w", leaseID, err)
	}
	return l, nil
}

func (s *Store) releaseOnce(ctx context.Context, leaseID uuid.UUID, usage *pharox.Usage) (*pharox.Lease, error) {
	var out *pharox.Lease
	err := s.run(ctx, func(tx execer) error {
		// Lock order here is lease, then quotas, then proxy; acquisitions
		// that hold a proxy only ever skip locked leases, and lock quotas
		// before proxies, so this cannot deadlock with them.
		var (
			at       time.Time
			hasQuota bool
			l        *pharox.Lease
			err      error
		)
		if usage == nil {
			l, err = scanLease(tx.QueryRowContext(ctx, s.q(`SELECT `+leaseCols+`, UTC_TIMESTAMP(6) FROM {p}leases WHERE id = ? FOR UPDATE`), idArg(leaseID)), &at)
		} else {
			l, err = scanLease(tx.QueryRowContext(ctx, s.q(`SELECT `+leaseCols+`, UTC_TIMESTAMP(6), `+leaseQuotaProbeSQL+`
				FROM {p}leases l WHERE id = ? FOR UPDATE`), idArg(leaseID)), &at, &hasQuota)
		}
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrLeaseNotFound
		}
		if err != nil {
			return err
		}
		if l.Status != pharox.LeaseActive {
			return fmt.Errorf("lease is %s: %w", l.Status, pharox.ErrLeaseNotActive)
		}
		// The clock is the locking statement's start; a lease committed
		// while that statement waited for it may have started later.
		at = utc(at)
		if at.Before(l.AcquiredAt) {
			at = l.AcquiredAt
		}
		if usage == nil {
			// freed_at tells the next acquisition of this slot not to
			// start before this release.
			if err := tx.later(ctx, s.q(`UPDATE {p}proxies SET current_leases = current_leases - 1,
				freed_at = GREATEST(COALESCE(freed_at, ?), ?) WHERE id = ?`), at, at, idArg(l.ProxyID)); err != nil {
				return err
			}
			if err := tx.later(ctx, s.q(`UPDATE {p}leases SET status = 'released', released_at = ? WHERE id = ?`), at, idArg(leaseID)); err != nil {
				return err
			}
		} else {
			allowance, proxyQuota, err := s.countUsage(ctx, tx, l, *usage, at, hasQuota)
			if err != nil {
				return err
			}
			// The proxy's allowance_until moves with its quota's
			// counters, in the same statement as its slot.
			set, args := ``, []any{at, at}
			if proxyQuota {
				set, args = `, allowance_until = ?`, append(args, allowance)
			}
			if err := tx.later(ctx, s.q(`UPDATE {p}proxies SET current_leases = current_leases - 1,
				freed_at = GREATEST(COALESCE(freed_at, ?), ?)`+set+` WHERE id = ?`), append(args, idArg(l.ProxyID))...); err != nil {
				return err
			}
			if err := tx.later(ctx, s.q(`UPDATE {p}leases SET status = 'released', released_at = ?, usage_requests = ?,
				usage_bytes_sent = ?, usage_bytes_received = ? WHERE id = ?`),
				at, usage.Requests, usage.BytesSent, usage.BytesReceived, idArg(leaseID)); err != nil {
				return err
			}
			u := *usage
			l.Usage = &u
		}
		l.Status, l.ReleasedAt = pharox.LeaseReleased, &at
		out = l
		return nil
	})
	return out, err
}

// RenewLease moves an active, unexpired lease's ExpiresAt to now + d. A
// lease found past its ExpiresAt is reclaimed as expired and the renewal
// fails with ErrLeaseNotActive.
func (s *Store) RenewLease(ctx context.Context, leaseID uuid.UUID, d time.Duration) (*pharox.Lease, error) {
	if d <= 0 {
		return nil, fail("mysql: renew lease %s: %w: duration must be positive, got %v", leaseID, pharox.ErrInvalidArgument, d)
	}
	var out *pharox.Lease
	err := s.run(ctx, func(tx execer) error {
		var now time.Time
		l, err := scanLease(tx.QueryRowContext(ctx, s.q(`SELECT `+leaseCols+`, UTC_TIMESTAMP(6) FROM {p}leases WHERE id = ? FOR UPDATE`), idArg(leaseID)), &now)
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrLeaseNotFound
		}
		if err != nil {
			return err
		}
		if l.Status != pharox.LeaseActive {
			return fmt.Errorf("lease is %s: %w", l.Status, pharox.ErrLeaseNotActive)
		}
		now = utc(now)
		if !l.ExpiresAt.After(now) {
			if err := s.expireLeases(ctx, tx, l.ProxyID, []any{idArg(l.ID)}); err != nil {
				return err
			}
			return errAfterCommit{fmt.Errorf("lease expired at %s: %w", l.ExpiresAt.Format(time.RFC3339Nano), pharox.ErrLeaseNotActive)}
		}
		l.ExpiresAt = micro(now.Add(d))
		if err := tx.later(ctx, s.q(`UPDATE {p}leases SET expires_at = ? WHERE id = ?`), l.ExpiresAt, idArg(leaseID)); err != nil {
			return err
		}
		out = l
		return nil
	})
	if err != nil {
		return nil, fail("mysql: renew lease %s: %w", leaseID, err)
	}
	return out, nil
}

// cleanupBatch bounds the leases one cleanup transaction ends, so it never
// holds many locks for long.
const cleanupBatch = 200

// CleanupExpiredLeases ends every active lease past its ExpiresAt as
// expired, in transactions of up to cleanupBatch leases, and deletes dead
// session bindings. Leases that a concurrent transaction holds are left to
// it (SKIP LOCKED), so a cleanup never waits for acquisitions or releases
// on leases, and two cleanups never end one lease twice.
func (s *Store) CleanupExpiredLeases(ctx context.Context) (int, error) {
	total := 0
	for {
		n, more, err := s.cleanupBatch(ctx)
		total += n
		if err != nil {
			return total, fail("mysql: cleanup expired leases: %w", err)
		}
		if !more {
			break
		}
	}
	if err := s.cleanupSessions(ctx); err != nil {
		return total, fail("mysql: cleanup expired sessions: %w", err)
	}
	return total, nil
}

// cleanupSessions deletes dead session bindings, a batch per transaction.
// A plain read finds them first, so a cleanup with nothing to do takes no
// locks at all; the delete skips bindings a sticky acquisition holds.
func (s *Store) cleanupSessions(ctx context.Context) error {
	for {
		var due bool
		if err := s.db.QueryRowContext(ctx, s.q(`SELECT EXISTS (SELECT 1 FROM {p}sessions WHERE expires_at <= UTC_TIMESTAMP(6))`)).Scan(&due); err != nil || !due {
			return err
		}
		var n int
		err := s.run(ctx, func(tx execer) error {
			rows, err := tx.QueryContext(ctx, s.q(`SELECT pool_id, key_hash FROM {p}sessions
				WHERE expires_at <= UTC_TIMESTAMP(6) LIMIT 500 FOR UPDATE SKIP LOCKED`))
			if err != nil {
				return err
			}
			var keys []any
			for rows.Next() {
				var pool string
				var hash []byte
				if err := rows.Scan(&pool, &hash); err != nil {
					rows.Close()
					return err
				}
				keys = append(keys, pool, hash)
			}
			rows.Close()
			if err := rows.Err(); err != nil || len(keys) == 0 {
				return err
			}
			n = len(keys) / 2
			_, err = tx.ExecContext(ctx, s.q(`DELETE FROM {p}sessions WHERE (pool_id, key_hash) IN (`+
				strings.TrimSuffix(strings.Repeat("(?, ?), ", n), ", ")+`) AND expires_at <= UTC_TIMESTAMP(6)`), keys...)
			return err
		})
		if err != nil || n < 500 {
			return err
		}
	}
}

func (s *Store) cleanupBatch(ctx context.Context) (ended int, more bool, err error) {
	err = s.run(ctx, func(tx execer) error {
		ended, more = 0, false
		rows, err := tx.QueryContext(ctx, s.q(`SELECT id, proxy_id FROM {p}leases FORCE INDEX ({p}leases_expiry)
			WHERE status = 'active' AND expires_at <= UTC_TIMESTAMP(6)
			ORDER BY expires_at LIMIT `+fmt.Sprint(cleanupBatch)+` FOR UPDATE SKIP LOCKED`))
		if err != nil {
			return err
		}
		byProxy := map[uuid.UUID][]any{}
		var order []uuid.UUID
		n := 0
		for rows.Next() {
			var id string
			var proxy uuid.UUID
			if err := rows.Scan(&id, &proxy); err != nil {
				rows.Close()
				return err
			}
			if _, ok := byProxy[proxy]; !ok {
				order = append(order, proxy)
			}
			byProxy[proxy] = append(byProxy[proxy], id)
			n++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		// Proxies in id order: two cleanups lock them in the same order.
		sortIDs(order)
		for _, p := range order {
			if err := s.expireLeases(ctx, tx, p, byProxy[p]); err != nil {
				return err
			}
		}
		ended, more = n, n == cleanupBatch
		return nil
	})
	return ended, more, err
}

func sortIDs(ids []uuid.UUID) {
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && strings.Compare(ids[j].String(), ids[j-1].String()) < 0; j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
}

// GetPoolStats returns the pool's occupancy from the proxies' counters; it
// reads no lease rows.
func (s *Store) GetPoolStats(ctx context.Context, pool string) (*pharox.PoolStats, error) {
	var (
		id                                    sql.NullString
		total, leasable, free, leased, leases int
		active, slow, inactive, banned        int
		now                                   time.Time
	)
	err := s.db.QueryRowContext(ctx, s.q(`SELECT pl.id, count(px.id),
			coalesce(sum(px.status IN ('active', 'slow')), 0),
			coalesce(sum(px.has_free_slot), 0),
			coalesce(sum(px.current_leases > 0), 0),
			coalesce(sum(px.current_leases), 0),
			coalesce(sum(px.status = 'active'), 0),
			coalesce(sum(px.status = 'slow'), 0),
			coalesce(sum(px.status = 'inactive'), 0),
			coalesce(sum(px.status = 'banned'), 0),
			UTC_TIMESTAMP(6)
		FROM {p}pools pl LEFT JOIN {p}proxies px ON px.pool_id = pl.id
		WHERE pl.name = ? GROUP BY pl.id`), pool).
		Scan(&id, &total, &leasable, &free, &leased, &leases, &active, &slow, &inactive, &banned, &now)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fail("mysql: pool stats %q: %w", pool, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, fail("mysql: pool stats %q: %w", pool, err)
	}
	st := &pharox.PoolStats{
		PoolName: pool, TotalProxies: total, ActiveProxies: leasable, AvailableProxies: free,
		LeasedProxies: leased, TotalLeases: leases, ByStatus: map[pharox.ProxyStatus]int{},
		CollectedAt: utc(now),
	}
	for status, n := range map[pharox.ProxyStatus]int{
		pharox.StatusActive: active, pharox.StatusSlow: slow,
		pharox.StatusInactive: inactive, pharox.StatusBanned: banned,
	} {
		if n > 0 {
			st.ByStatus[status] = n
		}
	}
	return st, nil
}

// ApplyHealthCheckResult applies r to its proxy with Proxy.ApplyHealthCheck
// under the proxy's row lock.
func (s *Store) ApplyHealthCheckResult(ctx context.Context, r pharox.HealthCheckResult) (*pharox.Proxy, error) {
	if err := r.Validate(); err != nil {
		return nil, fail("mysql: apply health check: %w", err)
	}
	r.CheckedAt = micro(r.CheckedAt)
	var out *pharox.Proxy
	err := s.run(ctx, func(tx execer) error {
		p, err := scanProxy(tx.QueryRowContext(ctx, s.q(`SELECT `+proxyCols+` FROM {p}proxies WHERE id = ? FOR UPDATE`), idArg(r.ProxyID)))
		if errors.Is(err, sql.ErrNoRows) {
			return nil // deleted mid-sweep
		}
		if err != nil {
			return err
		}
		p.ApplyHealthCheck(r)
		if p.StatusChangedAt != nil {
			t := micro(*p.StatusChangedAt)
			p.StatusChangedAt = &t
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE {p}proxies SET checked_at = ?, latency_ms = ?, last_status_code = ?,
			last_error = ?, failure_streak = ?, status = ?, status_changed_at = ? WHERE id = ?`),
			nullTime(p.CheckedAt), p.LatencyMS, p.LastStatusCode, p.LastError,
			p.FailureStreak, string(p.Status), nullTime(p.StatusChangedAt), idArg(p.ID)); err != nil {
			return err
		}
		out = p
		return nil
	})
	if err != nil {
		return nil, fail("mysql: apply health check to proxy %s: %w", r.ProxyID, err)
	}
	return out, nil
}
