package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pharox/pharox"
)

// ReleaseLease ends an active lease as released and frees its slot in one
// statement. The lease row is updated only while its status is still
// active, and PostgreSQL re-checks that predicate on the newest row version
// after waiting for a concurrent writer, so exactly one of any number of
// concurrent releases, renewals and reclaims ends a lease.
//
// With a usage report the same statement stores it on the lease and
// counts it (see releaseUsageSQL): in the hourly bucket, and in the byte
// counters of the quotas of the lease's consumer, pool and proxy; a proxy
// whose allowance that uses up gets its allowance_until. Only the release
// that ended the lease counts it.
//
// Unless WithDurableReleases is set, the release commits with
// synchronous_commit off (set_config local to its transaction), so it does
// not wait for a WAL flush. That is safe: if the database server crashed
// before the flush, the release would be lost, and the slot would stay
// taken until the lease expires, never given out twice. Every acquisition
// commits synchronously, and its flush makes durable all WAL before it,
// including any release whose slot it took. (A lost release loses its
// usage report with it.)
func (s *Store) ReleaseLease(ctx context.Context, leaseID uuid.UUID, usage *pharox.Usage) (*pharox.Lease, error) {
	if usage != nil {
		if err := usage.Validate(); err != nil {
			return nil, err
		}
	}
	var l *pharox.Lease
	var err error
	if s.batching() {
		it := releaseItem{id: leaseID}
		if usage != nil {
			it.usage = *usage
		}
		l, err = s.releaser.Do(ctx, usage != nil, it)
	} else {
		l, err = s.releaseStatement(ctx, leaseID, usage)
	}
	if errors.Is(err, errReleaseMissed) {
		return nil, s.leaseMissing(ctx, "release", leaseID)
	}
	return l, err
}

// releaseStatement runs the release of one lease (see ReleaseLease), with
// the usage report when not nil. It returns errReleaseMissed when the
// lease is not active.
func (s *Store) releaseStatement(ctx context.Context, leaseID uuid.UUID, usage *pharox.Usage) (*pharox.Lease, error) {
	var lr leaseRow
	var err error
	if usage == nil {
		// The status test is spelled so that it does not imply the
		// predicate of the partial "active" indexes: written as status =
		// 'active', the cached generic plan may walk every active lease of
		// leases_active_expiry and filter on id, instead of one
		// primary-key probe.
		err = s.pool.QueryRow(ctx, s.q(`WITH l AS (
	UPDATE {s}.leases SET status = 'released', released_at = clock_timestamp()
	WHERE id = $1 AND status NOT IN ('released', 'expired')
	RETURNING `+leaseColumns+`
), p AS (
	UPDATE {s}.proxies p SET current_leases = p.current_leases - 1 FROM l WHERE p.id = l.proxy_id
)
SELECT `+leaseColumns+`, set_config('synchronous_commit', $2, true) FROM l`), leaseID, s.releaseCommit()).Scan(append(lr.targets(), nil)...)
	} else {
		err = s.pool.QueryRow(ctx, s.q(releaseUsageSQL), leaseID, s.releaseCommit(), usage.Requests, usage.BytesSent, usage.BytesReceived).Scan(append(lr.targets(), nil)...)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errReleaseMissed
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: release lease %s: %w", leaseID, err)
	}
	return lr.lease(), nil
}

// releaseUsageSQL releases lease $1 with the usage report $3 requests, $4
// bytes sent, $5 bytes received ($2: see ReleaseLease): CTE l ends the
// lease and stores the report, and the tail (usageTailSQL) counts it and
// frees the slot.
var releaseUsageSQL = `WITH l AS (
	UPDATE {s}.leases SET status = 'released', released_at = clock_timestamp(),
		usage_requests = $3, usage_bytes_sent = $4, usage_bytes_received = $5
	WHERE id = $1 AND status NOT IN ('released', 'expired')
	RETURNING ` + leaseColumns + `
),` + usageTailSQL + `,
x AS MATERIALIZED (
	SELECT count(*) > 0 AS has, max(until) AS until FROM qu WHERE subject = 'proxy'
), p AS (
	UPDATE {s}.proxies p SET current_leases = p.current_leases - 1,
		allowance_until = CASE WHEN x.has THEN x.until ELSE p.allowance_until END
	FROM l, x WHERE p.id = l.proxy_id
)
SELECT ` + leaseColumns + `, set_config('synchronous_commit', $2, true) FROM l`

// usageTailSQL counts the usage of the leases CTE l just released, in the
// order every release that counts usage locks rows in: the leases (l),
// then the hourly buckets (b, inserted in primary-key order, so two
// releases never wait for each other's buckets in a cycle), then the
// quota rows of the leases' consumers, pools and proxies (ql, in
// (subject, subject_id) order, as acquisitions lock them, and before any
// proxy row, as everywhere), then the proxies (the statement that uses
// the tail). Each step reads the one before to completion (the
// one-time filters over counts), which makes that order certain.
//
//   - b adds each lease to the bucket of (hour of its release, consumer,
//     proxy, target): leases, requests, bytes.
//   - qn is the time the quotas count at, read once their rows are
//     locked, so that each quota's times only grow.
//   - qa sums the bytes per quota; qu applies Quota.AddBytes and returns
//     each proxy quota's Quota.ExhaustedUntil (NULL: not used up), which
//     the proxy's allowance_until becomes.
var usageTailSQL = `
b AS (
	INSERT INTO {s}.usage_hourly AS h (hour_start, consumer_id, proxy_id, pool_id, target, leases, requests, bytes_sent, bytes_received)
	SELECT date_trunc('hour', l.released_at, 'UTC'), l.consumer_id, l.proxy_id, l.pool_id, l.target,
		count(*), sum(l.usage_requests), sum(l.usage_bytes_sent), sum(l.usage_bytes_received)
	FROM l GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 5
	ON CONFLICT (hour_start, consumer_id, proxy_id, target) DO UPDATE SET
		leases = h.leases + excluded.leases, requests = h.requests + excluded.requests,
		bytes_sent = h.bytes_sent + excluded.bytes_sent, bytes_received = h.bytes_received + excluded.bytes_received
	RETURNING 1
),
ql AS MATERIALIZED (
	SELECT q.subject, q.subject_id FROM {s}.quotas q
	WHERE (SELECT count(*) FROM b) >= 0
	  AND ((q.subject = 'consumer' AND q.subject_id = ANY (ARRAY(SELECT consumer_id FROM l)))
	    OR (q.subject = 'pool' AND q.subject_id = ANY (ARRAY(SELECT pool_id FROM l)))
	    OR (q.subject = 'proxy' AND q.subject_id = ANY (ARRAY(SELECT proxy_id FROM l))))
	ORDER BY q.subject, q.subject_id
	FOR UPDATE OF q
),
qn AS MATERIALIZED (
	SELECT clock_timestamp() AS t FROM (SELECT count(*) FROM ql) z
),
qa AS MATERIALIZED (
	SELECT ql.subject, ql.subject_id, sum(l.usage_bytes_sent + l.usage_bytes_received)::bigint AS n
	FROM ql JOIN l ON CASE ql.subject WHEN 'consumer' THEN l.consumer_id WHEN 'pool' THEN l.pool_id ELSE l.proxy_id END = ql.subject_id
	GROUP BY ql.subject, ql.subject_id
),
qu AS (
	UPDATE {s}.quotas q SET ` + addBytesSQL("q", "a.n", "qn.t") + `
	FROM qa a, qn
	WHERE q.subject = a.subject AND q.subject_id = a.subject_id
	RETURNING q.subject, q.subject_id, ` + exhaustedUntilSQL("q") + ` AS until
)`

// leaseMissing explains why an update of an active lease found no row.
func (s *Store) leaseMissing(ctx context.Context, op string, id uuid.UUID) error {
	var exists bool
	if err := s.pool.QueryRow(ctx, s.q(`SELECT EXISTS (SELECT 1 FROM {s}.leases WHERE id = $1)`), id).Scan(&exists); err != nil {
		return fmt.Errorf("postgres: %s lease %s: %w", op, id, err)
	}
	if !exists {
		return fmt.Errorf("postgres: %s lease %s: %w", op, id, pharox.ErrLeaseNotFound)
	}
	return fmt.Errorf("postgres: %s lease %s: %w", op, id, pharox.ErrLeaseNotActive)
}

// RenewLease moves an active, unexpired lease's ExpiresAt to now + d. A
// lease found past its expiry is reclaimed as expired in the same
// transaction and ErrLeaseNotActive returned.
func (s *Store) RenewLease(ctx context.Context, leaseID uuid.UUID, d time.Duration) (*pharox.Lease, error) {
	if d <= 0 {
		return nil, fmt.Errorf("%w: renew duration must be positive, got %v", pharox.ErrInvalidArgument, d)
	}
	var out *pharox.Lease
	var endErr error
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var status string
		var expired bool
		err := tx.QueryRow(ctx, s.q(`SELECT status, expires_at <= clock_timestamp() FROM {s}.leases WHERE id = $1 FOR UPDATE`), leaseID).Scan(&status, &expired)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			endErr = pharox.ErrLeaseNotFound
			return nil
		case err != nil:
			return err
		case status != string(pharox.LeaseActive):
			endErr = pharox.ErrLeaseNotActive
			return nil
		case expired:
			endErr = pharox.ErrLeaseNotActive
			_, err := tx.Exec(ctx, s.q(`WITH l AS (
	UPDATE {s}.leases SET status = 'expired', released_at = clock_timestamp()
	WHERE id = $1 AND status = 'active' RETURNING proxy_id
)
UPDATE {s}.proxies p SET current_leases = p.current_leases - 1 FROM l WHERE p.id = l.proxy_id`), leaseID)
			return err
		}
		var lr leaseRow
		err = tx.QueryRow(ctx, s.q(`UPDATE {s}.leases SET expires_at = clock_timestamp() + $2::interval WHERE id = $1
RETURNING `+leaseColumns), leaseID, d.Truncate(time.Microsecond)).Scan(lr.targets()...)
		if err != nil {
			return err
		}
		out = lr.lease()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: renew lease %s: %w", leaseID, err)
	}
	if endErr != nil {
		return nil, fmt.Errorf("postgres: renew lease %s: %w", leaseID, endErr)
	}
	return out, nil
}

// cleanupBatch bounds how many leases one cleanup statement ends, so that
// the proxy rows it locks stay locked only for a short statement.
const cleanupBatch = 200

// CleanupExpiredLeases ends every active lease past its expiry as expired
// in set-based batches of cleanupBatch, then drops dead session bindings.
//
// It never makes an acquisition wait or fail: each batch is one statement
// in its own implicit transaction (one round trip, so no row stays locked
// while the client is busy), which locks the expired leases and then their
// proxies in id order, both FOR UPDATE SKIP LOCKED. A lease that a
// release or acquisition is ending right now, or whose proxy another
// transaction holds, is left alone: an acquisition that takes that proxy
// reclaims it, or the next cleanup ends it. Acquisitions skip the proxy
// rows a batch holds, and their last try waits for them (see
// WithAcquireAttempts). Waiting for no row at all, concurrent cleanups
// cannot deadlock with anything.
func (s *Store) CleanupExpiredLeases(ctx context.Context) (int, error) {
	total := 0
	for {
		var ended, seen int
		err := s.pool.QueryRow(ctx, s.q(cleanupSQL), pgx.QueryExecModeExec, cleanupBatch).Scan(&ended, &seen)
		if err != nil {
			return total, fmt.Errorf("postgres: cleanup expired leases: %w", err)
		}
		total += ended
		// Stop when the batch was not full, or when it could end none of
		// what it saw (all held by others): no call loops on locked rows.
		if seen < cleanupBatch || ended == 0 {
			break
		}
	}
	_, err := s.pool.Exec(ctx, s.q(`DELETE FROM {s}.sessions s
WHERE (s.pool_id, s.key) IN (
	SELECT pool_id, key FROM {s}.sessions WHERE expires_at <= clock_timestamp() FOR UPDATE SKIP LOCKED)
  AND s.expires_at <= clock_timestamp()`))
	if err != nil {
		return total, fmt.Errorf("postgres: cleanup session bindings: %w", err)
	}
	return total, nil
}

// cleanupSQL ends up to $1 expired leases whose lease and proxy rows it
// can lock without waiting (see CleanupExpiredLeases) and frees their
// slots. It returns how many it ended and how many expired leases it saw.
// Rows are found by = ANY over arrays, which keeps every step an index
// lookup whatever the planner guesses about the size of a CTE. Run with
// QueryExecModeExec (see reclaimSQL).
const cleanupSQL = `WITH cand AS MATERIALIZED (
	SELECT x.id, x.proxy_id FROM {s}.leases x
	WHERE x.status = 'active' AND x.expires_at <= clock_timestamp()
	ORDER BY x.expires_at LIMIT $1
	FOR UPDATE OF x SKIP LOCKED
), locked AS MATERIALIZED (
	SELECT p.id FROM {s}.proxies p WHERE p.id = ANY (ARRAY(SELECT proxy_id FROM cand))
	ORDER BY p.id FOR NO KEY UPDATE SKIP LOCKED
), exp AS (
	UPDATE {s}.leases l SET status = 'expired', released_at = clock_timestamp()
	WHERE l.id = ANY (ARRAY(SELECT c.id FROM cand c WHERE c.proxy_id = ANY (ARRAY(SELECT id FROM locked))))
	  AND l.status = 'active'
	RETURNING l.proxy_id
), c AS MATERIALIZED (
	SELECT proxy_id, count(*)::integer AS n FROM exp GROUP BY proxy_id
), freed AS (
	UPDATE {s}.proxies p SET current_leases = p.current_leases - c.n FROM c
	WHERE p.id = ANY (ARRAY(SELECT proxy_id FROM c)) AND p.id = c.proxy_id
)
SELECT (SELECT count(*)::integer FROM exp), (SELECT count(*)::integer FROM cand)`

// reclaimSQL ends the expired active leases selected by cond (over alias x
// of leases, which may end with ORDER BY/LIMIT) and frees their slots in one
// statement; it returns the number of leases ended. Leases locked by a
// concurrent transaction are skipped: that transaction is ending them.
// Proxy rows are locked in id order, as batched releases lock them, so
// that two statements freeing slots of several proxies never deadlock.
// Callers run it with QueryExecModeExec: planned on each call for the
// table's current size, never with a generic plan cached while the table
// was small (these statements are not on the hot path).
func reclaimSQL(cond string) string {
	return `WITH exp AS (
	UPDATE {s}.leases l SET status = 'expired', released_at = clock_timestamp()
	WHERE l.id = ANY (ARRAY(
		SELECT x.id FROM {s}.leases x
		WHERE ` + cond + `
		FOR UPDATE OF x SKIP LOCKED))
	RETURNING l.proxy_id
), c AS MATERIALIZED (
	SELECT proxy_id, count(*)::integer AS n FROM exp GROUP BY proxy_id
), locked AS MATERIALIZED (
	SELECT p.id FROM {s}.proxies p WHERE p.id = ANY (ARRAY(SELECT proxy_id FROM c)) ORDER BY p.id FOR NO KEY UPDATE
), freed AS (
	UPDATE {s}.proxies p SET current_leases = p.current_leases - c.n FROM c
	WHERE p.id = ANY (ARRAY(SELECT id FROM locked)) AND p.id = c.proxy_id
)
SELECT count(*)::integer FROM exp`
}

// GetLease returns a lease by id. Ended leases are kept until
// PurgeEndedLeases deletes them.
func (s *Store) GetLease(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	var lr leaseRow
	err := s.pool.QueryRow(ctx, s.q(`SELECT `+leaseColumns+` FROM {s}.leases WHERE id = $1`), id).Scan(lr.targets()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get lease %s: %w", id, pharox.ErrLeaseNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get lease %s: %w", id, err)
	}
	return lr.lease(), nil
}

// ListLeases returns the leases matching q, oldest AcquiredAt first.
func (s *Store) ListLeases(ctx context.Context, q pharox.LeaseQuery) ([]*pharox.Lease, error) {
	if q.Status != "" && !q.Status.Valid() {
		return nil, fmt.Errorf("%w: unknown lease status %q", pharox.ErrInvalidArgument, q.Status)
	}
	if q.Limit < 0 {
		return nil, fmt.Errorf("%w: negative lease limit %d", pharox.ErrInvalidArgument, q.Limit)
	}
	a := &args{}
	var conds []string
	if q.PoolID != uuid.Nil {
		conds = append(conds, "pool_id = "+a.add(q.PoolID))
	}
	if q.ProxyID != uuid.Nil {
		// leases_pool is the index: a proxy's leases share its pool.
		ph := a.add(q.ProxyID)
		conds = append(conds, "pool_id = (SELECT pool_id FROM {s}.proxies WHERE id = "+ph+") AND proxy_id = "+ph)
	}
	if q.ConsumerID != uuid.Nil {
		conds = append(conds, "consumer_id = "+a.add(q.ConsumerID))
	}
	if q.Status != "" {
		conds = append(conds, "status = "+a.add(string(q.Status))+"::text")
	}
	sql := `SELECT ` + leaseColumns + ` FROM {s}.leases`
	if len(conds) > 0 {
		sql += " WHERE " + strings.Join(conds, " AND ")
	}
	sql += " ORDER BY acquired_at, id"
	if q.Limit > 0 {
		sql += " LIMIT " + a.add(q.Limit)
	}
	// Planned per call (see reclaimSQL): the leases table grows without bound.
	rows, err := s.pool.Query(ctx, s.q(sql), append([]any{pgx.QueryExecModeExec}, a.vals...)...)
	if err != nil {
		return nil, fmt.Errorf("postgres: list leases: %w", err)
	}
	defer rows.Close()
	out := []*pharox.Lease{}
	for rows.Next() {
		var lr leaseRow
		if err := rows.Scan(lr.targets()...); err != nil {
			return nil, fmt.Errorf("postgres: list leases: %w", err)
		}
		out = append(out, lr.lease())
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list leases: %w", err)
	}
	return out, nil
}

// PurgeEndedLeases deletes released and expired leases that ended before
// endedBefore.
func (s *Store) PurgeEndedLeases(ctx context.Context, endedBefore time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, s.q(`DELETE FROM {s}.leases WHERE status <> 'active' AND released_at < $1`), pgx.QueryExecModeExec, endedBefore)
	if err != nil {
		return 0, fmt.Errorf("postgres: purge ended leases: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
