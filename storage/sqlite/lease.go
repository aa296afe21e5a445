package sqlite

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// reclaimBatch bounds the leases one cleanup transaction ends, so the write
// lock is never held for long.
const reclaimBatch = 500

// AcquireLease atomically chooses a proxy and leases one of its slots. The
// whole operation is one BEGIN IMMEDIATE transaction: no other connection,
// in this process or another, writes between the choice and the insert.
func (s *Store) AcquireLease(ctx context.Context, req pharox.AcquireRequest) (*pharox.Lease, error) {
	req.Filters = req.Filters.NormalizedClone()
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("sqlite: acquire lease: %w", err)
	}
	var lease *pharox.Lease
	err := s.writeTx(ctx, func(tx *wtx) error {
		// One statement for every lookup: each statement costs a round
		// through database/sql and the VDBE. Besides the pool and the
		// consumer it probes the quotas the acquisition must mind, so a
		// store without quotas pays three index probes and nothing else.
		var (
			poolIDText, consumerName sql.NullString
			consumerQuota, poolQuota bool
			exhausted                bool
		)
		now := s.stamp()
		if err := tx.queryRow(acquireLookupSQL, req.PoolName, idArg(req.ConsumerID), micros(now)).
			Scan(&poolIDText, &consumerName, &consumerQuota, &poolQuota, &exhausted); err != nil {
			return err
		}
		if !poolIDText.Valid {
			return pharox.ErrPoolNotFound
		}
		if !consumerName.Valid {
			return fmt.Errorf("consumer %s: %w", req.ConsumerID, pharox.ErrConsumerNotFound)
		}
		poolID, err := uuid.Parse(poolIDText.String)
		if err != nil {
			return fmt.Errorf("corrupt pool id %q: %w", poolIDText.String, err)
		}
		consumerNam := consumerName.String
		if req.ConsumerName != "" {
			consumerNam = req.ConsumerName
		}
		if _, err := reclaimPool(tx, poolID, now); err != nil {
			return err
		}
		if req.LeaseID != uuid.Nil {
			// A retry: the write lock makes the lookup and the insert
			// below one step, so concurrent retries take one slot. It is
			// not an acquisition: no quota is checked or charged.
			l, err := repeatedLease(tx, req.LeaseID, poolID, req.ConsumerID)
			if l != nil || err != nil {
				lease = l
				return err
			}
		}
		// The write lock serializes this check with every other
		// acquisition and release, in any process: what it counts stays
		// true until the commit.
		quotas, err := admit(tx, req.ConsumerID, poolID, consumerQuota, poolQuota, now)
		if err != nil {
			return err
		}

		var chosen *pharox.Proxy
		if req.SessionKey != "" {
			p, err := sessionProxy(tx, poolID, req.SessionKey, req.Filters, req.Target, exhausted, now)
			if err != nil {
				return err
			}
			chosen = p
		}
		advanceRR := false
		if chosen == nil {
			p, err := choose(tx, poolID, req.Filters, req.Target, exhausted, now, req.Strategy, s.filterBudget)
			if err != nil {
				return err
			}
			if p == nil {
				return pharox.ErrNoProxyAvailable
			}
			// A sticky hit is not a round-robin turn; only a fresh choice
			// moves the cursor.
			chosen, advanceRR = p, req.Strategy == pharox.RoundRobin
		}

		// The clock is read after the choice, under the write lock, so a
		// lease never appears to start before the release that freed its
		// slot.
		at := s.stamp()
		id, callerID := req.LeaseID, 1
		if id == uuid.Nil {
			id, callerID = newLeaseID(at), 0
		}
		l := &pharox.Lease{
			ID: id, ProxyID: chosen.ID, ConsumerID: req.ConsumerID, ConsumerName: consumerNam,
			PoolID: poolID, PoolName: req.PoolName, Status: pharox.LeaseActive,
			AcquiredAt: at, ExpiresAt: at.Add(req.Duration).Truncate(time.Microsecond),
			SessionKey: req.SessionKey, Target: req.Target,
		}
		// The insert takes the slot: a trigger counts it on the proxy in
		// the same statement, and the proxies CHECK would fail it if the
		// proxy were full. A capped consumer's lease also enters the index
		// its cap counts (leases_capped_consumer); other leases stay out.
		if _, err := tx.exec(`INSERT INTO leases (id, proxy_id, pool_id, pool_name, consumer_id,
			consumer_name, status, acquired_at, expires_at, session_key, caller_id, target, consumer_capped)
			VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?)`,
			idArg(l.ID), idArg(l.ProxyID), idArg(poolID), l.PoolName, idArg(l.ConsumerID),
			l.ConsumerName, micros(l.AcquiredAt), micros(l.ExpiresAt), l.SessionKey, callerID, l.Target,
			consumerCapped(quotas)); err != nil {
			return err
		}
		// Only an acquisition that leased a proxy takes a token.
		if err := takeTokens(tx, quotas, now); err != nil {
			return err
		}
		// Nothing else wrote the proxy since choose read it: the snapshot
		// is that row plus this lease.
		snap := chosen
		snap.CurrentLeases++
		l.Proxy = snap
		if req.SessionKey != "" {
			if _, err := tx.exec(`INSERT INTO sessions (pool_id, session_key, proxy_id, expires_at)
				VALUES (?, ?, ?, ?)
				ON CONFLICT (pool_id, session_key) DO UPDATE SET proxy_id = excluded.proxy_id,
					expires_at = excluded.expires_at`,
				idArg(poolID), req.SessionKey, idArg(snap.ID), micros(at.Add(req.SessionTTL))); err != nil {
				return err
			}
		}
		if advanceRR {
			if _, err := tx.exec(`INSERT INTO round_robin (pool_id, last_proxy_id) VALUES (?, ?)
				ON CONFLICT (pool_id) DO UPDATE SET last_proxy_id = excluded.last_proxy_id`,
				idArg(poolID), idArg(snap.ID)); err != nil {
				return err
			}
		}
		lease = l
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: acquire lease from pool %q: %w", req.PoolName, err)
	}
	return lease, nil
}

// repeatedLease returns the lease with the caller-chosen id, as it is now,
// when it was taken from this pool by this consumer: the acquisition is a
// retry. It returns nil for an unknown id and ErrAlreadyExists for an id
// another consumer or pool holds.
func repeatedLease(tx *wtx, id, poolID, consumerID uuid.UUID) (*pharox.Lease, error) {
	l, err := scanLease(tx.queryRow(`SELECT `+leaseCols+` FROM leases WHERE id = ?`, idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if l.PoolID != poolID || l.ConsumerID != consumerID {
		return nil, fmt.Errorf("lease id %s is taken by another consumer or pool: %w", id, pharox.ErrAlreadyExists)
	}
	p, err := scanProxy(tx.queryRow(`SELECT `+proxyCols+` FROM proxies WHERE id = ?`, idArg(l.ProxyID)))
	if err != nil {
		return nil, err
	}
	l.Proxy = p
	return l, nil
}

// sessionProxy returns the proxy bound to (pool, key) if the binding is
// live and the proxy is still a candidate, else nil. exhausted says the
// pool has proxies whose traffic allowance is used up: the bound proxy
// may be one.
func sessionProxy(tx *wtx, poolID uuid.UUID, key string, f *pharox.Filters, target string, exhausted bool, now time.Time) (*pharox.Proxy, error) {
	args := []any{idArg(poolID), key, micros(now)}
	cond := ""
	if target != "" {
		cond, args = notCoolingSQL, append(args, target, micros(now))
	}
	if exhausted {
		cond, args = cond+allowanceSQL, append(args, micros(now))
	}
	p, err := scanProxy(tx.queryRow(`SELECT `+prefixed("p.", proxyCols)+`
		FROM sessions s JOIN proxies p ON p.id = s.proxy_id
		WHERE s.pool_id = ? AND s.session_key = ? AND s.expires_at > ?
			AND p.pool_id = s.pool_id AND p.has_free_slot = 1`+cond,
		args...))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if ok, err := newMatcher(f).match(p); !ok || err != nil {
		return nil, err
	}
	return p, nil
}

// FindAvailableProxy returns the proxy AcquireLease would choose now, without
// leasing it. It runs in a write transaction only to reclaim expired leases
// first, so its answer counts them as free as AcquireLease would.
func (s *Store) FindAvailableProxy(ctx context.Context, pool string, filters *pharox.Filters, strategy pharox.Strategy) (*pharox.Proxy, error) {
	if !strategy.Valid() {
		return nil, fmt.Errorf("sqlite: find available proxy: %w: unknown strategy %q", pharox.ErrInvalidArgument, strategy)
	}
	filters = filters.NormalizedClone()
	if err := filters.Validate(); err != nil {
		return nil, fmt.Errorf("sqlite: find available proxy: %w", err)
	}
	var out *pharox.Proxy
	err := s.writeTx(ctx, func(tx *wtx) error {
		var (
			poolID    uuid.UUID
			exhausted bool
		)
		now := s.stamp()
		if err := tx.queryRow(findLookupSQL, pool, micros(now)).
			Scan(&poolID, &exhausted); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return pharox.ErrPoolNotFound
			}
			return err
		}
		if _, err := reclaimPool(tx, poolID, now); err != nil {
			return err
		}
		p, err := choose(tx, poolID, filters, "", exhausted, now, strategy.OrDefault(), s.filterBudget)
		if err != nil {
			return err
		}
		if p == nil {
			return errAfterCommit{pharox.ErrNoProxyAvailable}
		}
		out = p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: find available proxy in pool %q: %w", pool, err)
	}
	return out, nil
}

// DefaultFilterScanBudget is how many proxies with a free slot one
// acquisition examines, at most, looking for one its filters accept; see
// WithFilterScanBudget.
const DefaultFilterScanBudget = 5000

// walk is one pass over a partial index of the pool's proxies with a free
// slot: the index, its order, and an optional range condition that starts
// the pass at a cursor.
type walk struct {
	index, order string
	cond         string // " AND ..." or empty
	args         []any
}

// strategyWalks returns the passes strategy makes, in order: the answer is
// the first candidate the filters accept in the first pass that has one.
// rrLast is the round-robin cursor ("" before the pool's first round-robin
// lease). Random makes no walk (see chooseRandom).
func strategyWalks(strategy pharox.Strategy, rrLast string) []walk {
	switch strategy {
	case pharox.LeastUsed:
		return []walk{{index: "proxies_least_used", order: "status_rank, current_leases, id"}}
	case pharox.RoundRobin:
		w := walk{index: "proxies_round_robin", order: "id"}
		if rrLast == "" {
			return []walk{w}
		}
		after, upTo := w, w
		after.cond, after.args = " AND id > ?", []any{rrLast}
		upTo.cond, upTo.args = " AND id <= ?", []any{rrLast}
		return []walk{after, upTo}
	default:
		return []walk{{index: "proxies_first_available", order: "status_rank, checked_key DESC, id"}}
	}
}

// walkSQL returns the query of one pass. Unfiltered, it reads the first
// entry of the index range. Filtered, the inner query walks at most
// budget index entries in order and the outer one applies the SQL part of
// the filters: a LIMITed subquery in FROM runs as a co-routine, so rows
// reach the outer WHERE, and the caller, in the inner query's order, and
// the walk stops as soon as the caller stops reading.
func walkSQL(w walk, pre sqlFilter, filtered bool) string {
	inner := `SELECT * FROM proxies INDEXED BY ` + w.index + ` WHERE pool_id = ? AND has_free_slot = 1` + w.cond +
		` ORDER BY ` + w.order
	if !filtered {
		return `SELECT ` + proxyCols + ` FROM (` + inner + ` LIMIT 1)`
	}
	return `SELECT ` + proxyCols + ` FROM (` + inner + ` LIMIT ?) AS candidates WHERE 1` + pre.where
}

// acquireLookupSQL reads, for an acquisition (args: pool name, consumer
// id, now), the pool's id, the consumer's name, whether the consumer and
// the pool have quotas, and whether the pool has a proxy whose traffic
// allowance is used up (exhaustedSQL). Each is one probe of a primary key
// or of a partial index that is empty while no allowance is used up.
var acquireLookupSQL = `SELECT pl.id, c.name,
		EXISTS (SELECT 1 FROM quotas WHERE subject = 'consumer' AND subject_id = arg.consumer_id),
		EXISTS (SELECT 1 FROM quotas WHERE subject = 'pool' AND subject_id = pl.id),
		EXISTS (` + exhaustedSQL("?3") + `)
	FROM (SELECT ?1 AS pool_name, ?2 AS consumer_id) AS arg
		LEFT JOIN pools pl ON pl.name = arg.pool_name
		LEFT JOIN consumers c ON c.id = arg.consumer_id`

// exhaustedSQL finds a proxy of pool pl whose allowance is used up at the
// parameter now.
func exhaustedSQL(now string) string {
	return `SELECT 1 FROM proxies INDEXED BY proxies_allowance WHERE pool_id = pl.id AND allowance_until > ` + now
}

// findLookupSQL reads the pool's id and whether it has a proxy whose
// allowance is used up (args: pool name, now).
var findLookupSQL = `SELECT id, EXISTS (` + exhaustedSQL("?2") + `) FROM pools pl WHERE name = ?1`

// allowanceSQL keeps the candidates whose traffic allowance is not used up
// (arg: now). The walks add it only when exhaustedSQL found such a proxy
// in the pool; it reads the candidate's row, which the walk reads anyway.
const allowanceSQL = ` AND (allowance_until IS NULL OR allowance_until <= ?)`

// notCoolingSQL keeps the candidates not cooling down for a target (args:
// target, now). The unqualified id is the candidate's: proxy_targets has no
// column of that name. It is a primary-key lookup per candidate.
const notCoolingSQL = ` AND NOT EXISTS (SELECT 1 FROM proxy_targets t
	WHERE t.proxy_id = id AND t.target = ? AND t.cooling_until > ?)`

// errTooSelective is the answer when a filter, a target's cool-downs or
// used-up traffic allowances rejected every proxy a pass's budget allowed
// it to examine; filter says whether the caller filtered.
func errTooSelective(budget int, filter bool, target string) error {
	if !filter && target == "" {
		return fmt.Errorf("%w: all of the %d proxies with a free slot examined have used up their traffic allowance (see their quotas)",
			pharox.ErrNoProxyAvailable, budget)
	}
	if target != "" {
		return fmt.Errorf("%w: none of the %d proxies with a free slot examined matched the filter without cooling down for target %q (narrow the pool or loosen the filter)",
			pharox.ErrNoProxyAvailable, budget, target)
	}
	return fmt.Errorf("%w: the filter matched none of the %d proxies with a free slot examined; it is too selective to serve from a pool this large (narrow the pool or loosen the filter)",
		pharox.ErrNoProxyAvailable, budget)
}

// choose returns the first candidate of the pool under strategy, or nil.
// Each strategy walks a partial index holding only proxies with a free
// slot, in its order, so finding the first candidate costs O(log n)
// whatever the number of busy proxies. Filters narrow the walk in SQL where
// columns allow and Filters.Match then decides each row exactly, so every
// filter (tags, radius, nested groups, predicates) has the reference
// semantics; no filter has an index of its own, so a filtered walk examines
// at most budget proxies with a free slot and then gives up with
// ErrNoProxyAvailable (see errTooSelective).
//
// With a target, proxies cooling down for it are skipped in SQL
// (notCoolingSQL): the walk is then a filtered one, its budget counting
// the skipped proxies too. So are, when exhausted says the pool has any,
// the proxies whose traffic allowance is used up (allowanceSQL).
func choose(tx *wtx, poolID uuid.UUID, filters *pharox.Filters, target string, exhausted bool, now time.Time, strategy pharox.Strategy, budget int) (*pharox.Proxy, error) {
	filtered := !filters.IsZero() || target != "" || exhausted
	var pre sqlFilter
	if !filters.IsZero() {
		pre = prefilter(filters)
	}
	if target != "" {
		pre.where += notCoolingSQL
		pre.args = append(pre.args, target, micros(now))
	}
	if exhausted {
		pre.where += allowanceSQL
		pre.args = append(pre.args, micros(now))
	}
	f := newMatcher(filters)
	tooSelective := func() error { return errTooSelective(budget, !filters.IsZero(), target) }
	if strategy == pharox.Random {
		return chooseRandom(tx, poolID, pre, f, filtered, budget, tooSelective)
	}
	var rrLast string
	if strategy == pharox.RoundRobin {
		err := tx.queryRow(`SELECT last_proxy_id FROM round_robin WHERE pool_id = ?`, idArg(poolID)).Scan(&rrLast)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
	}
	left := budget
	for _, w := range strategyWalks(strategy, rrLast) {
		args := append([]any{idArg(poolID)}, w.args...)
		if filtered {
			args = append(append(args, left), pre.args...)
		}
		p, err := first(tx, walkSQL(w, pre, filtered), args, f)
		if p != nil || err != nil || !filtered {
			if p != nil || err != nil {
				return p, err
			}
			continue
		}
		// No match: the pass examined every entry of its range or its
		// whole budget; count which, reading the index alone.
		var n int
		if err := tx.queryRow(`SELECT count(*) FROM (SELECT 1 FROM proxies INDEXED BY `+w.index+
			` WHERE pool_id = ? AND has_free_slot = 1`+w.cond+` LIMIT ?)`,
			append(append([]any{idArg(poolID)}, w.args...), left)...).Scan(&n); err != nil {
			return nil, err
		}
		if left -= n; left <= 0 {
			return nil, tooSelective()
		}
	}
	return nil, nil
}

// randomBatch is how many distinct random positions one draw of a filtered
// Random choice reads in one statement.
const randomBatch = 64

const randomCountSQL = `SELECT n FROM random_counts WHERE pool_id = ?`

var (
	randomProbeSQL = `SELECT ` + proxyColsP + ` FROM random_slots s JOIN proxies p ON p.id = s.proxy_id
		WHERE s.pool_id = ? AND s.pos = ?`
	randomAllSQL = `SELECT ` + proxyColsP + ` FROM random_slots s JOIN proxies p ON p.id = s.proxy_id
		WHERE s.pool_id = ?`
)

// chooseRandom picks uniformly among the pool's candidates the filters
// accept. The n proxies with a free slot are numbered 0..n-1
// (random_slots), so an unfiltered pick is one random number and one key
// lookup. Filtered, each draw reads randomBatch distinct random positions
// (a uniform random subset) and picks uniformly among those the filters
// accept, which is uniform among all accepted candidates; draws repeat
// while they find none, up to budget positions, then errTooSelective. A
// pool with at most budget candidates is instead sampled exactly in one
// pass after the first empty draw.
func chooseRandom(tx *wtx, poolID uuid.UUID, pre sqlFilter, f matcher, filtered bool, budget int, tooSelective func() error) (*pharox.Proxy, error) {
	var n int
	err := tx.queryRow(randomCountSQL, idArg(poolID)).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) || err == nil && n == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !filtered {
		p, err := scanProxy(tx.queryRow(randomProbeSQL, idArg(poolID), rand.IntN(n)))
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("random_slots has no proxy numbered below its count %d", n)
		}
		return p, err
	}
	k := min(randomBatch, n)
	query := randomAllSQL + ` AND s.pos IN (?` + strings.Repeat(`, ?`, k-1) + `)` + pre.where
	for examined := 0; examined < budget; examined += k {
		args := make([]any, 0, 1+k+len(pre.args))
		args = append(args, idArg(poolID))
		seen := make(map[int]bool, k)
		for len(seen) < k {
			if pos := rand.IntN(n); !seen[pos] {
				seen[pos] = true
				args = append(args, pos)
			}
		}
		p, err := randomScan(tx, query, append(args, pre.args...), f)
		if p != nil || err != nil {
			return p, err
		}
		if n <= budget {
			return randomScan(tx, randomAllSQL+pre.where, append([]any{idArg(poolID)}, pre.args...), f)
		}
	}
	return nil, tooSelective()
}

// randomScan picks uniformly among the rows f matches (reservoir sampling).
func randomScan(tx *wtx, query string, args []any, f matcher) (*pharox.Proxy, error) {
	rows, err := tx.query(query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var (
		pick *pharox.Proxy
		seen int
	)
	for rows.Next() {
		p, err := scanProxy(rows)
		if err != nil {
			return nil, err
		}
		ok, err := f.match(p)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		seen++
		if rand.IntN(seen) == 0 {
			pick = p
		}
	}
	return pick, rows.Err()
}

// first returns the first row of query that f matches.
func first(tx *wtx, query string, args []any, f matcher) (*pharox.Proxy, error) {
	rows, err := tx.query(query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		p, err := scanProxy(rows)
		if err != nil {
			return nil, err
		}
		if ok, err := f.match(p); ok || err != nil {
			if err != nil {
				return nil, err
			}
			return p, nil
		}
	}
	return nil, rows.Err()
}

// ReleaseLease ends an active lease as released and frees its slot. With
// a usage report it also stores the report on the lease and counts it
// (countUsage), in the same transaction; without one it runs exactly the
// statements it ran before usage was metered.
func (s *Store) ReleaseLease(ctx context.Context, leaseID uuid.UUID, usage *pharox.Usage) (*pharox.Lease, error) {
	var out *pharox.Lease
	err := s.writeTx(ctx, func(tx *wtx) error {
		// Every clock reading inside the transaction is taken under the
		// write lock, so it follows any release another writer committed
		// and precedes any acquisition that reuses this slot.
		at := s.stamp()
		var row *sql.Row
		if usage == nil {
			row = tx.queryRow(`UPDATE leases SET status = 'released', released_at = ?
				WHERE id = ? AND status = 'active' RETURNING `+leaseCols, micros(at), idArg(leaseID))
		} else {
			row = tx.queryRow(`UPDATE leases SET status = 'released', released_at = ?, usage_requests = ?,
				usage_bytes_sent = ?, usage_bytes_received = ?
				WHERE id = ? AND status = 'active' RETURNING `+leaseCols,
				micros(at), usage.Requests, usage.BytesSent, usage.BytesReceived, idArg(leaseID))
		}
		l, err := scanLease(row)
		if errors.Is(err, sql.ErrNoRows) {
			// Nothing is counted: a lease ends, and reports, once.
			var status string
			err := tx.queryRow(`SELECT status FROM leases WHERE id = ?`, idArg(leaseID)).Scan(&status)
			if errors.Is(err, sql.ErrNoRows) {
				return pharox.ErrLeaseNotFound
			}
			if err != nil {
				return err
			}
			return fmt.Errorf("lease is %s: %w", status, pharox.ErrLeaseNotActive)
		}
		if err != nil {
			return err
		}
		// The leases_count_end trigger freed the slot in that statement.
		if usage != nil {
			if err := countUsage(tx, l, *usage, at); err != nil {
				return err
			}
		}
		out = l
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: release lease %s: %w", leaseID, err)
	}
	return out, nil
}

// RenewLease moves an active, unexpired lease's ExpiresAt to now + d.
func (s *Store) RenewLease(ctx context.Context, leaseID uuid.UUID, d time.Duration) (*pharox.Lease, error) {
	if d <= 0 {
		return nil, fmt.Errorf("sqlite: renew lease %s: %w: duration must be positive, got %v", leaseID, pharox.ErrInvalidArgument, d)
	}
	var out *pharox.Lease
	err := s.writeTx(ctx, func(tx *wtx) error {
		l, err := scanLease(tx.queryRow(`SELECT `+leaseCols+` FROM leases WHERE id = ?`, idArg(leaseID)))
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrLeaseNotFound
		}
		if err != nil {
			return err
		}
		if l.Status != pharox.LeaseActive {
			return fmt.Errorf("lease is %s: %w", l.Status, pharox.ErrLeaseNotActive)
		}
		now := s.stamp()
		if !l.ExpiresAt.After(now) {
			if _, err := reclaimProxy(tx, l.ProxyID, now); err != nil {
				return err
			}
			return errAfterCommit{fmt.Errorf("lease expired at %s: %w", l.ExpiresAt.Format(time.RFC3339Nano), pharox.ErrLeaseNotActive)}
		}
		l.ExpiresAt = now.Add(d).Truncate(time.Microsecond)
		if _, err := tx.exec(`UPDATE leases SET expires_at = ? WHERE id = ?`, micros(l.ExpiresAt), idArg(leaseID)); err != nil {
			return err
		}
		out = l
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: renew lease %s: %w", leaseID, err)
	}
	return out, nil
}

// reclaimPool ends the pool's active leases past their expiry and frees
// their slots, in the caller's transaction. INDEXED BY pins the partial
// index of active leases by pool and expiry: it holds only leases that can
// expire, and only this pool's are walked.
func reclaimPool(tx *wtx, poolID uuid.UUID, now time.Time) (int, error) {
	return reclaim(tx, reclaimPoolSQL, idArg(poolID), micros(now))
}

const reclaimPoolSQL = `UPDATE leases INDEXED BY leases_active_pool
	SET status = 'expired', released_at = expires_at
	WHERE pool_id = ? AND status = 'active' AND expires_at <= ?`

// reclaimProxy does the same for one proxy. It walks the expired leases of
// the proxy's pool, which every acquisition from the pool reclaims, so they
// are few; an index by proxy would also hold every ended lease.
func reclaimProxy(tx *wtx, proxyID uuid.UUID, now time.Time) (int, error) {
	return reclaim(tx, reclaimProxySQL, idArg(proxyID), micros(now))
}

const reclaimProxySQL = `UPDATE leases INDEXED BY leases_active_pool
	SET status = 'expired', released_at = expires_at
	WHERE pool_id = (SELECT pool_id FROM proxies WHERE id = ?1) AND proxy_id = ?1
		AND status = 'active' AND expires_at <= ?2`

// reclaim runs an UPDATE that ends leases and returns how many it ended;
// the leases_count_end trigger frees their slots. Ending a lease records
// ReleasedAt = ExpiresAt: the moment it stopped being valid.
func reclaim(tx *wtx, query string, args ...any) (int, error) {
	res, err := tx.exec(query, args...)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// CleanupExpiredLeases ends every active lease past its expiry, in batches
// of reclaimBatch per transaction, and drops dead session bindings.
func (s *Store) CleanupExpiredLeases(ctx context.Context) (int, error) {
	total := 0
	for {
		n, err := s.reclaimBatch(ctx)
		total += n
		if err != nil {
			return total, fmt.Errorf("sqlite: cleanup expired leases: %w", err)
		}
		if n < reclaimBatch {
			break
		}
	}
	err := s.writeTx(ctx, func(tx *wtx) error {
		_, err := tx.exec(`DELETE FROM sessions WHERE expires_at <= ?`, micros(s.stamp()))
		return err
	})
	if err != nil {
		return total, fmt.Errorf("sqlite: cleanup expired sessions: %w", err)
	}
	return total, nil
}

const reclaimDueSQL = `SELECT EXISTS (SELECT 1 FROM pools p CROSS JOIN leases l INDEXED BY leases_active_pool
	ON l.pool_id = p.id AND l.status = 'active' AND l.expires_at <= ?)`

// reclaimBatch ends up to reclaimBatch expired leases in one transaction.
func (s *Store) reclaimBatch(ctx context.Context) (int, error) {
	var n int
	err := s.writeTx(ctx, func(tx *wtx) error {
		var err error
		n, err = reclaim(tx, reclaimBatchSQL, micros(s.stamp()), reclaimBatch)
		return err
	})
	return n, err
}

// reclaimBatchSQL walks the active leases past their expiry pool by pool
// (CROSS JOIN keeps pools the outer loop): pools are few, and each pool's
// walk reads only its expired leases.
const reclaimBatchSQL = `UPDATE leases SET status = 'expired', released_at = expires_at
	WHERE id IN (SELECT l.id FROM pools p CROSS JOIN leases l INDEXED BY leases_active_pool
		ON l.pool_id = p.id AND l.status = 'active' AND l.expires_at <= ?
		LIMIT ?)`

// reclaimIfDue reclaims expired leases before a read whose answer counts
// leases, so reads agree with what the next acquisition would see. The
// check is one probe of a partial index per pool; the write happens only
// when some lease has actually expired.
func (s *Store) reclaimIfDue(ctx context.Context) error {
	var due bool
	if err := s.r.QueryRowContext(ctx, reclaimDueSQL, micros(s.stamp())).Scan(&due); err != nil {
		return err
	}
	for due {
		n, err := s.reclaimBatch(ctx)
		if err != nil {
			return err
		}
		due = n == reclaimBatch
	}
	return nil
}

// GetPoolStats returns the pool's occupancy from the proxies' counters; it
// reads no lease rows.
func (s *Store) GetPoolStats(ctx context.Context, pool string) (*pharox.PoolStats, error) {
	if err := s.reclaimIfDue(ctx); err != nil {
		return nil, fmt.Errorf("sqlite: pool stats %q: %w", pool, err)
	}
	var (
		id                                    string
		total, leasable, free, leased, leases int
		active, slow, inactive, banned        int
	)
	err := s.r.QueryRowContext(ctx, `SELECT pl.id, count(px.id),
			coalesce(sum(px.status IN ('active', 'slow')), 0),
			coalesce(sum(px.has_free_slot), 0),
			coalesce(sum(px.current_leases > 0), 0),
			coalesce(sum(px.current_leases), 0),
			coalesce(sum(px.status = 'active'), 0),
			coalesce(sum(px.status = 'slow'), 0),
			coalesce(sum(px.status = 'inactive'), 0),
			coalesce(sum(px.status = 'banned'), 0)
		FROM pools pl LEFT JOIN proxies px ON px.pool_id = pl.id
		WHERE pl.name = ? GROUP BY pl.id`, pool).
		Scan(&id, &total, &leasable, &free, &leased, &leases, &active, &slow, &inactive, &banned)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: pool stats %q: %w", pool, pharox.ErrPoolNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: pool stats %q: %w", pool, err)
	}
	st := &pharox.PoolStats{
		PoolName: pool, TotalProxies: total, ActiveProxies: leasable, AvailableProxies: free,
		LeasedProxies: leased, TotalLeases: leases, ByStatus: map[pharox.ProxyStatus]int{},
		CollectedAt: s.stamp(),
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

// ApplyHealthCheckResult applies r to its proxy with Proxy.ApplyHealthCheck,
// inside one write transaction.
func (s *Store) ApplyHealthCheckResult(ctx context.Context, r pharox.HealthCheckResult) (*pharox.Proxy, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("sqlite: apply health check: %w", err)
	}
	// Stored times are microseconds; apply the stored value so the returned
	// proxy equals what later reads return.
	r.CheckedAt = r.CheckedAt.UTC().Truncate(time.Microsecond)
	var out *pharox.Proxy
	err := s.writeTx(ctx, func(tx *wtx) error {
		if _, err := reclaimProxy(tx, r.ProxyID, s.stamp()); err != nil {
			return err
		}
		p, err := scanProxy(tx.queryRow(`SELECT `+proxyCols+` FROM proxies WHERE id = ?`, idArg(r.ProxyID)))
		if errors.Is(err, sql.ErrNoRows) {
			return nil // deleted mid-sweep
		}
		if err != nil {
			return err
		}
		p.ApplyHealthCheck(r)
		if _, err := tx.exec(`UPDATE proxies SET checked_at = ?, latency_ms = ?, last_status_code = ?,
			last_error = ?, failure_streak = ?, status = ?, status_changed_at = ? WHERE id = ?`,
			nullTime(microsPtr(p.CheckedAt)), p.LatencyMS, p.LastStatusCode, p.LastError,
			p.FailureStreak, string(p.Status), nullTime(microsPtr(p.StatusChangedAt)), idArg(p.ID)); err != nil {
			return err
		}
		out = p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: apply health check to proxy %s: %w", r.ProxyID, err)
	}
	return out, nil
}

// newLeaseID returns a version 7 UUID for a lease acquired at at: the
// acquisition time in milliseconds, then its microseconds (in rand_a), then
// random bits. Lease ids therefore sort by AcquiredAt, so new leases land at
// the end of the lease table's b-tree rather than on a random page, and
// PurgeEndedLeases finds old leases by key range without an index of its
// own.
func newLeaseID(at time.Time) uuid.UUID {
	var id uuid.UUID
	us := max(at.UnixMicro(), 0)
	ms, sub := uint64(us/1000), uint64(us%1000)
	for i := range 6 {
		id[i] = byte(ms >> (40 - 8*i))
	}
	id[6] = 0x70 | byte(sub>>8)&0x0f
	id[7] = byte(sub)
	// Lease ids are handles to release or renew a lease: keep the random
	// part unguessable.
	crand.Read(id[8:])
	id[8] = 0x80 | id[8]&0x3f // RFC 9562 variant
	return id
}

// leaseIDBound returns the smallest lease id of any lease acquired after
// the millisecond of t: every lease acquired at or before t sorts below it.
func leaseIDBound(t time.Time) string {
	var id uuid.UUID
	ms := uint64(max(t.UnixMilli(), -1) + 1)
	for i := range 6 {
		id[i] = byte(ms >> (40 - 8*i))
	}
	return id.String()
}
