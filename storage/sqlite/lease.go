package sqlite

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
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
		// One statement for both lookups: each statement costs a round
		// through database/sql and the VDBE.
		var poolIDText, consumerName sql.NullString
		if err := tx.queryRow(`SELECT (SELECT id FROM pools WHERE name = ?), (SELECT name FROM consumers WHERE id = ?)`,
			req.PoolName, idArg(req.ConsumerID)).Scan(&poolIDText, &consumerName); err != nil {
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
		now := s.stamp()
		if _, err := reclaimPool(tx, poolID, now); err != nil {
			return err
		}
		if req.LeaseID != uuid.Nil {
			// A retry: the write lock makes the lookup and the insert
			// below one step, so concurrent retries take one slot.
			l, err := repeatedLease(tx, req.LeaseID, poolID, req.ConsumerID)
			if l != nil || err != nil {
				lease = l
				return err
			}
		}

		var chosen *pharox.Proxy
		if req.SessionKey != "" {
			p, err := sessionProxy(tx, poolID, req.SessionKey, req.Filters, now)
			if err != nil {
				return err
			}
			chosen = p
		}
		advanceRR := false
		if chosen == nil {
			p, err := choose(tx, poolID, req.Filters, req.Strategy)
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
			SessionKey: req.SessionKey,
		}
		// The insert takes the slot: a trigger counts it on the proxy in
		// the same statement, and the proxies CHECK would fail it if the
		// proxy were full.
		if _, err := tx.exec(`INSERT INTO leases (id, proxy_id, pool_id, pool_name, consumer_id,
			consumer_name, status, acquired_at, expires_at, session_key, caller_id)
			VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?)`,
			idArg(l.ID), idArg(l.ProxyID), idArg(poolID), l.PoolName, idArg(l.ConsumerID),
			l.ConsumerName, micros(l.AcquiredAt), micros(l.ExpiresAt), l.SessionKey, callerID); err != nil {
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
// live and the proxy is still a candidate, else nil.
func sessionProxy(tx *wtx, poolID uuid.UUID, key string, f *pharox.Filters, now time.Time) (*pharox.Proxy, error) {
	p, err := scanProxy(tx.queryRow(`SELECT `+prefixed("p.", proxyCols)+`
		FROM sessions s JOIN proxies p ON p.id = s.proxy_id
		WHERE s.pool_id = ? AND s.session_key = ? AND s.expires_at > ?
			AND p.pool_id = s.pool_id AND p.has_free_slot = 1`,
		idArg(poolID), key, micros(now)))
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
		var poolID uuid.UUID
		if err := tx.queryRow(`SELECT id FROM pools WHERE name = ?`, pool).Scan(&poolID); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return pharox.ErrPoolNotFound
			}
			return err
		}
		if _, err := reclaimPool(tx, poolID, s.stamp()); err != nil {
			return err
		}
		p, err := choose(tx, poolID, filters, strategy.OrDefault())
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

// choose returns the first candidate of the pool under strategy, or nil.
// SQL narrows and orders the candidates through an index; Filters.Match then
// decides each one exactly, so every filter (tags, radius, nested groups,
// predicates) has the reference semantics.
func choose(tx *wtx, poolID uuid.UUID, filters *pharox.Filters, strategy pharox.Strategy) (*pharox.Proxy, error) {
	pre := prefilter(filters)
	f := newMatcher(filters)
	// INDEXED BY pins each strategy to the index that yields its order, so
	// the walk stops at the first match instead of sorting the pool; the
	// planner has no statistics to choose by.
	from := func(index string) string {
		return ` FROM proxies INDEXED BY ` + index + ` WHERE pool_id = ? AND has_free_slot = 1` + pre.where
	}
	sel := func(index string) string { return `SELECT ` + proxyCols + from(index) }
	args := append([]any{idArg(poolID)}, pre.args...)
	switch strategy {
	case pharox.LeastUsed:
		return first(tx, sel("proxies_least_used")+` ORDER BY status_rank, current_leases, id`, args, f)
	case pharox.RoundRobin:
		var last string
		err := tx.queryRow(`SELECT last_proxy_id FROM round_robin WHERE pool_id = ?`, idArg(poolID)).Scan(&last)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
		if last != "" {
			p, err := first(tx, sel("proxies_by_id")+` AND id > ? ORDER BY id`, append(args, last), f)
			if p != nil || err != nil {
				return p, err
			}
		}
		// Wrap around.
		return first(tx, sel("proxies_by_id")+` ORDER BY id`, args, f)
	case pharox.Random:
		if pre.exact {
			return randomExact(tx, from("proxies_first_available"), args)
		}
		return randomScan(tx, sel("proxies_first_available"), args, f)
	default:
		return first(tx, sel("proxies_first_available")+` ORDER BY status_rank, checked_key DESC, id`, args, f)
	}
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

// randomExact picks uniformly when SQL alone decides the candidates: count
// them, then read only the chosen one.
func randomExact(tx *wtx, from string, args []any) (*pharox.Proxy, error) {
	var n int
	if err := tx.queryRow(`SELECT count(*)`+from, args...).Scan(&n); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	p, err := scanProxy(tx.queryRow(`SELECT `+proxyCols+from+` ORDER BY status_rank, checked_key DESC, id LIMIT 1 OFFSET ?`, append(args, rand.IntN(n))...))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return p, err
}

// randomScan picks uniformly among the rows f matches (reservoir sampling).
func randomScan(tx *wtx, base string, args []any, f matcher) (*pharox.Proxy, error) {
	rows, err := tx.query(base, args...)
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

// ReleaseLease ends an active lease as released and frees its slot.
func (s *Store) ReleaseLease(ctx context.Context, leaseID uuid.UUID) (*pharox.Lease, error) {
	var out *pharox.Lease
	err := s.writeTx(ctx, func(tx *wtx) error {
		// Every clock reading inside the transaction is taken under the
		// write lock, so it follows any release another writer committed
		// and precedes any acquisition that reuses this slot.
		at := s.stamp()
		l, err := scanLease(tx.queryRow(`UPDATE leases SET status = 'released', released_at = ?
			WHERE id = ? AND status = 'active' RETURNING `+leaseCols, micros(at), idArg(leaseID)))
		if errors.Is(err, sql.ErrNoRows) {
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
// index of active leases: it holds only leases that can expire, where an
// index by pool or proxy would also walk every ended lease.
func reclaimPool(tx *wtx, poolID uuid.UUID, now time.Time) (int, error) {
	return reclaim(tx, `UPDATE leases INDEXED BY leases_active_expiry
		SET status = 'expired', released_at = expires_at
		WHERE pool_id = ? AND status = 'active' AND expires_at <= ?`,
		idArg(poolID), micros(now))
}

// reclaimProxy does the same for one proxy.
func reclaimProxy(tx *wtx, proxyID uuid.UUID, now time.Time) (int, error) {
	return reclaim(tx, `UPDATE leases INDEXED BY leases_active_expiry
		SET status = 'expired', released_at = expires_at
		WHERE proxy_id = ? AND status = 'active' AND expires_at <= ?`,
		idArg(proxyID), micros(now))
}

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

// reclaimBatch ends up to reclaimBatch expired leases in one transaction.
func (s *Store) reclaimBatch(ctx context.Context) (int, error) {
	var n int
	err := s.writeTx(ctx, func(tx *wtx) error {
		var err error
		n, err = reclaim(tx, `UPDATE leases SET status = 'expired', released_at = expires_at
			WHERE id IN (SELECT id FROM leases INDEXED BY leases_active_expiry
				WHERE status = 'active' AND expires_at <= ?
				ORDER BY expires_at LIMIT ?)`, micros(s.stamp()), reclaimBatch)
		return err
	})
	return n, err
}

// reclaimIfDue reclaims expired leases before a read whose answer counts
// leases, so reads agree with what the next acquisition would see. The
// check is one probe of a partial index; the write happens only when some
// lease has actually expired.
func (s *Store) reclaimIfDue(ctx context.Context) error {
	var due bool
	if err := s.r.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM leases INDEXED BY leases_active_expiry
		WHERE status = 'active' AND expires_at <= ?)`, micros(s.stamp())).Scan(&due); err != nil {
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
