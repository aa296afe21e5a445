package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pharox/pharox"
)

var _ pharox.TargetStore = (*Store)(nil)

// targetColumns are the proxy_targets columns every read selects, in the
// order of targetRow.dest.
const targetColumns = "proxy_id, target, failure_streak, bans, cooling_until, banned_at, last_reason, last_status_code, last_success_at, last_failure_at, updated_at"

// targetRow receives one proxy_targets row.
type targetRow struct {
	proxyID                uuid.UUID
	target                 string
	streak, bans           int32
	coolingUntil, bannedAt *time.Time
	reason                 string
	code                   int32
	successAt, failureAt   *time.Time
	updatedAt              time.Time
}

func (r *targetRow) dest() []any {
	return []any{&r.proxyID, &r.target, &r.streak, &r.bans, &r.coolingUntil, &r.bannedAt,
		&r.reason, &r.code, &r.successAt, &r.failureAt, &r.updatedAt}
}

func (r *targetRow) state() *pharox.TargetState {
	return &pharox.TargetState{
		ProxyID: r.proxyID, Target: r.target,
		FailureStreak: int(r.streak), Bans: int(r.bans),
		CoolingUntil: utcPtr(r.coolingUntil), BannedAt: utcPtr(r.bannedAt),
		LastReason: r.reason, LastStatusCode: int(r.code),
		LastSuccessAt: utcPtr(r.successAt), LastFailureAt: utcPtr(r.failureAt),
		UpdatedAt: utc(r.updatedAt),
	}
}

// ApplyTargetOutcome applies o to its (proxy, target) entry with the
// reference rule pharox.TargetState.Apply, in one transaction of two round
// trips:
//
//  1. a transaction-scoped advisory lock on the proxy (so outcomes for one
//     proxy apply one at a time, and its cap and escalation count are
//     exact across processes), the time (o.At, or the database clock),
//     and the entry, read FOR UPDATE;
//  2. the new state, computed here, written back with one upsert; for a
//     new entry, the eviction of the proxy's longest-idle entries beyond
//     p.MaxTargetsPerProxy; the count of the proxy's entries whose last
//     cool-down started within p.EscalateWindow; COMMIT.
//
// The advisory lock is all that outcomes of one proxy wait for:
// acquisitions read proxy_targets without locking it, and the lock is
// not the proxy row's, which acquisitions lock FOR UPDATE SKIP LOCKED.
// (Only the insert of a new entry takes a key-share lock on its proxy
// row, for the foreign key: an acquisition passes over the proxy for that
// moment.) Times are stored with microsecond precision.
func (s *Store) ApplyTargetOutcome(ctx context.Context, o pharox.TargetOutcome, p pharox.TargetPolicy) (*pharox.TargetState, int, error) {
	if err := o.Validate(); err != nil {
		return nil, 0, fmt.Errorf("postgres: apply target outcome: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, 0, fmt.Errorf("postgres: apply target outcome: %w", err)
	}
	st, n, err := s.applyTargetOutcome(ctx, o, p)
	if err != nil {
		if pgCode(err) == codeForeignKeyViolation {
			err = pharox.ErrProxyNotFound
		}
		return nil, 0, fmt.Errorf("postgres: apply target outcome for proxy %s, target %q: %w", o.ProxyID, o.Target, err)
	}
	return st, n, nil
}

func (s *Store) applyTargetOutcome(ctx context.Context, o pharox.TargetOutcome, p pharox.TargetPolicy) (_ *pharox.TargetState, _ int, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, 0, err
	}
	// A connection released inside a transaction is closed by the pool;
	// the ROLLBACK (a no-op outside one) only spares it.
	defer conn.Release()
	defer func() {
		if err != nil {
			_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()

	var at *time.Time
	if !o.At.IsZero() {
		t := micro(o.At)
		at = &t
	}
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "pharox.target:"+s.cfg.schema+"/"+o.ProxyID.String())
	b.Queue(`SELECT coalesce($1::timestamptz, clock_timestamp())`, at)
	b.Queue(s.q(`SELECT `+targetColumns+` FROM {s}.proxy_targets WHERE proxy_id = $1 AND target = $2 FOR UPDATE`), o.ProxyID, o.Target)
	var (
		now   time.Time
		row   targetRow
		found bool
	)
	err = func() error {
		br := conn.SendBatch(ctx, b)
		defer br.Close()
		for range 2 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		if err := br.QueryRow().Scan(&now); err != nil {
			return err
		}
		switch err := br.QueryRow().Scan(row.dest()...); {
		case err == nil:
			found = true
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		return br.Close()
	}()
	if err != nil {
		return nil, 0, err
	}
	now = utc(now)

	var prev pharox.TargetState
	if found {
		prev = *row.state()
	}
	next := prev.Apply(o, p, now)
	next.CoolingUntil, next.BannedAt = microPtr(next.CoolingUntil), microPtr(next.BannedAt)
	next.LastSuccessAt, next.LastFailureAt = microPtr(next.LastSuccessAt), microPtr(next.LastFailureAt)
	next.UpdatedAt = micro(next.UpdatedAt)

	b = &pgx.Batch{}
	b.Queue(s.q(`INSERT INTO {s}.proxy_targets (`+targetColumns+`)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
	ON CONFLICT (proxy_id, target) DO UPDATE SET failure_streak = excluded.failure_streak, bans = excluded.bans,
		cooling_until = excluded.cooling_until, banned_at = excluded.banned_at, last_reason = excluded.last_reason,
		last_status_code = excluded.last_status_code, last_success_at = excluded.last_success_at,
		last_failure_at = excluded.last_failure_at, updated_at = excluded.updated_at`),
		next.ProxyID, next.Target, next.FailureStreak, next.Bans, next.CoolingUntil, next.BannedAt,
		next.LastReason, next.LastStatusCode, next.LastSuccessAt, next.LastFailureAt, next.UpdatedAt)
	if !found {
		// A new entry may take the proxy past its cap: the longest-idle
		// others go (at most the proxy's entries are read, a range of the
		// primary key).
		b.Queue(s.q(`DELETE FROM {s}.proxy_targets d WHERE d.proxy_id = $1 AND d.target IN (
	SELECT e.target FROM {s}.proxy_targets e WHERE e.proxy_id = $1 AND e.target <> $2
	ORDER BY e.idle_at, e.target COLLATE "C"
	LIMIT greatest((SELECT count(*) FROM {s}.proxy_targets c WHERE c.proxy_id = $1) - $3::integer, 0))`),
			o.ProxyID, o.Target, p.MaxTargetsPerProxy)
	}
	b.Queue(s.q(`SELECT count(*)::integer FROM {s}.proxy_targets WHERE proxy_id = $1 AND banned_at >= $2`),
		o.ProxyID, next.UpdatedAt.Add(-p.EscalateWindow))
	b.Queue("COMMIT")
	var recent int
	err = func() error {
		br := conn.SendBatch(ctx, b)
		defer br.Close()
		for range b.Len() - 2 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		if err := br.QueryRow().Scan(&recent); err != nil {
			return err
		}
		if _, err := br.Exec(); err != nil {
			return err
		}
		return br.Close()
	}()
	if err != nil {
		return nil, 0, err
	}
	return &next, recent, nil
}

// ListTargetStates returns the proxy's per-target entries, ordered by
// target; ErrProxyNotFound when the proxy does not exist.
func (s *Store) ListTargetStates(ctx context.Context, proxyID uuid.UUID) ([]*pharox.TargetState, error) {
	var (
		exists bool
		out    []*pharox.TargetState
	)
	err := func() error {
		// One implicit transaction: the entries are those of the proxy
		// that the first statement found.
		b := &pgx.Batch{}
		b.Queue(s.q(`SELECT EXISTS (SELECT 1 FROM {s}.proxies WHERE id = $1)`), proxyID)
		b.Queue(s.q(`SELECT `+targetColumns+` FROM {s}.proxy_targets WHERE proxy_id = $1`), proxyID)
		br := s.pool.SendBatch(ctx, b)
		defer br.Close()
		if err := br.QueryRow().Scan(&exists); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r targetRow
			if err := rows.Scan(r.dest()...); err != nil {
				return err
			}
			out = append(out, r.state())
		}
		return rows.Err()
	}()
	switch {
	case err != nil:
		return nil, fmt.Errorf("postgres: list target states of proxy %s: %w", proxyID, err)
	case !exists:
		return nil, fmt.Errorf("postgres: list target states of proxy %s: %w", proxyID, pharox.ErrProxyNotFound)
	}
	slices.SortFunc(out, func(a, b *pharox.TargetState) int { return strings.Compare(a.Target, b.Target) })
	return out, nil
}

// PoolTargetStats returns, ordered by target, the health of each target
// that a proxy of the pool has an entry for: the proxies cooling down for
// it now, the leasable proxies (active or slow) not cooling down for it,
// and the proxies whose last cool-down for it started within the last
// hour. One statement over the pool's proxies and their entries; it reads
// no lease. ErrPoolNotFound when the pool does not exist.
func (s *Store) PoolTargetStats(ctx context.Context, poolID uuid.UUID) ([]*pharox.TargetStats, error) {
	var (
		exists bool
		out    []*pharox.TargetStats
	)
	err := func() error {
		b := &pgx.Batch{}
		b.Queue(s.q(`SELECT EXISTS (SELECT 1 FROM {s}.pools WHERE id = $1)`), poolID)
		b.Queue(s.q(`WITH px AS MATERIALIZED (
	SELECT p.id, p.status IN ('active', 'slow') AS leasable FROM {s}.proxies p WHERE p.pool_id = $1
),
clock AS MATERIALIZED (
	SELECT clock_timestamp() AS now
)
SELECT t.target,
	(count(*) FILTER (WHERE t.cooling_until > c.now))::integer,
	((SELECT count(*) FROM px WHERE leasable) - count(*) FILTER (WHERE px.leasable AND t.cooling_until > c.now))::integer,
	(count(*) FILTER (WHERE t.banned_at >= c.now - interval '1 hour'))::integer
FROM px JOIN {s}.proxy_targets t ON t.proxy_id = px.id CROSS JOIN clock c
GROUP BY t.target`), poolID)
		br := s.pool.SendBatch(ctx, b)
		defer br.Close()
		if err := br.QueryRow().Scan(&exists); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				st                    pharox.TargetStats
				cooling, usable, bans int32
			)
			if err := rows.Scan(&st.Target, &cooling, &usable, &bans); err != nil {
				return err
			}
			st.CoolingProxies, st.UsableProxies, st.BansLastHour = int(cooling), int(usable), int(bans)
			out = append(out, &st)
		}
		return rows.Err()
	}()
	switch {
	case err != nil:
		return nil, fmt.Errorf("postgres: target stats of pool %s: %w", poolID, err)
	case !exists:
		return nil, fmt.Errorf("postgres: target stats of pool %s: %w", poolID, pharox.ErrPoolNotFound)
	}
	slices.SortFunc(out, func(a, b *pharox.TargetStats) int { return strings.Compare(a.Target, b.Target) })
	return out, nil
}

// PurgeTargetStates deletes the per-target entries that went idle (see
// pharox.TargetState.IdleSince) before idleBefore, through the
// proxy_targets_idle index, and returns how many. An entry an outcome
// updates meanwhile is re-checked on its new version and kept.
func (s *Store) PurgeTargetStates(ctx context.Context, idleBefore time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, s.q(`DELETE FROM {s}.proxy_targets WHERE idle_at < $1`), idleBefore)
	if err != nil {
		return 0, fmt.Errorf("postgres: purge target states: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
