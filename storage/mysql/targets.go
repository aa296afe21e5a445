package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

var _ pharox.TargetStore = (*Store)(nil)

// targetCols lists the proxy_targets columns scanTarget reads, in order.
const targetCols = `proxy_id, target, failure_streak, bans, cooling_until, banned_at,
	last_reason, last_status_code, last_success_at, last_failure_at, updated_at`

func scanTarget(sc scanner, extra ...any) (*pharox.TargetState, error) {
	var (
		st               pharox.TargetState
		cooling, banned  sql.NullTime
		success, failure sql.NullTime
		reason           sql.NullString
	)
	dest := []any{&st.ProxyID, &st.Target, &st.FailureStreak, &st.Bans, &cooling, &banned,
		&reason, &st.LastStatusCode, &success, &failure, &st.UpdatedAt}
	if err := sc.Scan(append(dest, extra...)...); err != nil {
		return nil, err
	}
	st.CoolingUntil, st.BannedAt = timePtr(cooling), timePtr(banned)
	st.LastSuccessAt, st.LastFailureAt = timePtr(success), timePtr(failure)
	st.LastReason = reason.String
	st.UpdatedAt = utc(st.UpdatedAt)
	return &st, nil
}

func timePtr(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	u := utc(t.Time)
	return &u
}

// ApplyTargetOutcome applies o to its (proxy, target) entry with the
// reference rule pharox.TargetState.Apply, in one READ COMMITTED
// transaction: the entry is read FOR UPDATE (with the time, o.At or the
// server clock, and the count of the proxy's other entries whose last
// cool-down started within p.EscalateWindow), the new state is computed
// here and written back with the COMMIT, two round trips in all. A new
// entry is inserted instead (its foreign key takes a shared lock on the
// proxy row: an acquisition passes over the proxy for that moment; a
// missing proxy is ErrProxyNotFound), and the proxy's longest-idle
// entries beyond p.MaxTargetsPerProxy are evicted. Outcomes for one
// entry apply one at a time; outcomes for different targets of one proxy
// do not wait for each other, so two of them at the same instant may
// each miss the other in the cap and the escalation count. Times are
// stored with microsecond precision.
func (s *Store) ApplyTargetOutcome(ctx context.Context, o pharox.TargetOutcome, p pharox.TargetPolicy) (*pharox.TargetState, int, error) {
	if err := o.Validate(); err != nil {
		return nil, 0, fail("mysql: apply target outcome: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, 0, fail("mysql: apply target outcome: %w", err)
	}
	var at any
	if !o.At.IsZero() {
		at = micro(o.At)
	}
	window := p.EscalateWindow.Microseconds()
	var (
		out    *pharox.TargetState
		recent int
	)
	err := s.run(ctx, func(tx execer) error {
		for {
			var (
				now    time.Time
				others int
			)
			prev, err := scanTarget(tx.QueryRowContext(ctx, s.q(`SELECT `+targetCols+`, CAST(COALESCE(?, UTC_TIMESTAMP(6)) AS DATETIME(6)),
				(SELECT count(*) FROM {p}proxy_targets x WHERE x.proxy_id = t.proxy_id AND x.target <> t.target
					AND x.banned_at >= CAST(COALESCE(?, UTC_TIMESTAMP(6)) AS DATETIME(6)) - INTERVAL ? MICROSECOND)
				FROM {p}proxy_targets t WHERE t.proxy_id = ? AND t.target = ? FOR UPDATE`),
				at, at, window, idArg(o.ProxyID), o.Target), &now, &others)
			fresh := errors.Is(err, sql.ErrNoRows)
			if err != nil && !fresh {
				return err
			}
			if fresh {
				prev = &pharox.TargetState{}
				if err := tx.QueryRowContext(ctx, `SELECT CAST(COALESCE(?, UTC_TIMESTAMP(6)) AS DATETIME(6))`, at).Scan(&now); err != nil {
					return err
				}
			}
			next := prev.Apply(o, p, utc(now))
			next.CoolingUntil, next.BannedAt = microPtr(next.CoolingUntil), microPtr(next.BannedAt)
			next.LastSuccessAt, next.LastFailureAt = microPtr(next.LastSuccessAt), microPtr(next.LastFailureAt)
			next.UpdatedAt = micro(next.UpdatedAt)
			vals := []any{next.FailureStreak, next.Bans, nullTime(next.CoolingUntil), nullTime(next.BannedAt),
				next.LastReason, next.LastStatusCode, nullTime(next.LastSuccessAt), nullTime(next.LastFailureAt), next.UpdatedAt,
				idArg(o.ProxyID), o.Target}
			out = &next
			if !fresh {
				recent = others
				if next.RecentlyBanned(next.UpdatedAt, p.EscalateWindow) {
					recent++
				}
				return tx.later(ctx, s.q(`UPDATE {p}proxy_targets SET failure_streak = ?, bans = ?, cooling_until = ?, banned_at = ?,
					last_reason = ?, last_status_code = ?, last_success_at = ?, last_failure_at = ?, updated_at = ?
					WHERE proxy_id = ? AND target = ?`), vals...)
			}
			_, err = tx.ExecContext(ctx, s.q(`INSERT INTO {p}proxy_targets (failure_streak, bans, cooling_until, banned_at,
				last_reason, last_status_code, last_success_at, last_failure_at, updated_at, proxy_id, target)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`), vals...)
			switch code(err) {
			case 0:
			case errDupEntry:
				// A concurrent first outcome for this entry inserted it
				// (and has committed: the insert waited for it). Read it.
				continue
			case errNoReferencedRow:
				return pharox.ErrProxyNotFound
			default:
				return err
			}
			if err := s.evictTargets(ctx, tx, o.ProxyID, o.Target, p.MaxTargetsPerProxy); err != nil {
				return err
			}
			return tx.QueryRowContext(ctx, s.q(`SELECT count(*) FROM {p}proxy_targets WHERE proxy_id = ? AND banned_at >= ?`),
				idArg(o.ProxyID), next.UpdatedAt.Add(-p.EscalateWindow)).Scan(&recent)
		}
	})
	if err != nil {
		return nil, 0, fail("mysql: apply target outcome for proxy %s, target %q: %w", o.ProxyID, o.Target, err)
	}
	return out, recent, nil
}

// evictTargets deletes the proxy's longest-idle entries other than keep
// while it has more than limit. It reads at most the proxy's entries, a
// range of the primary key.
func (s *Store) evictTargets(ctx context.Context, tx execer, proxyID uuid.UUID, keep string, limit int) error {
	var n int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT count(*) FROM {p}proxy_targets WHERE proxy_id = ?`), idArg(proxyID)).Scan(&n); err != nil {
		return err
	}
	if n <= limit {
		return nil
	}
	rows, err := tx.QueryContext(ctx, s.q(`SELECT target FROM {p}proxy_targets WHERE proxy_id = ? AND target <> ?
		ORDER BY idle_at, target LIMIT ?`), idArg(proxyID), keep, n-limit)
	if err != nil {
		return err
	}
	args := []any{idArg(proxyID)}
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return err
		}
		args = append(args, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(args) == 1 {
		return err
	}
	_, err = tx.ExecContext(ctx, s.q(`DELETE FROM {p}proxy_targets WHERE proxy_id = ? AND target IN (`+placeholders(len(args)-1)+`)`), args...)
	return err
}

// ListTargetStates returns the proxy's per-target entries, ordered by
// target; ErrProxyNotFound when the proxy does not exist.
func (s *Store) ListTargetStates(ctx context.Context, proxyID uuid.UUID) ([]*pharox.TargetState, error) {
	var out []*pharox.TargetState
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var got string
		err := tx.QueryRowContext(ctx, s.q(`SELECT id FROM {p}proxies WHERE id = ?`), idArg(proxyID)).Scan(&got)
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrProxyNotFound
		}
		if err != nil {
			return err
		}
		out, err = list(ctx, tx, s.q(`SELECT `+targetCols+` FROM {p}proxy_targets WHERE proxy_id = ? ORDER BY target`), []any{idArg(proxyID)},
			func(sc scanner) (*pharox.TargetState, error) { return scanTarget(sc) })
		return err
	})
	if err != nil {
		return nil, fail("mysql: list target states of proxy %s: %w", proxyID, err)
	}
	return out, nil
}

// PoolTargetStats returns, ordered by target, the health of each target
// that a proxy of the pool has an entry for: the proxies cooling down for
// it now, the leasable proxies (active or slow) not cooling down for it,
// and the proxies whose last cool-down for it started within the last
// hour. It reads the pool's proxies and their entries, never a lease.
// ErrPoolNotFound when the pool does not exist.
func (s *Store) PoolTargetStats(ctx context.Context, poolID uuid.UUID) ([]*pharox.TargetStats, error) {
	var out []*pharox.TargetStats
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		out = nil
		var (
			leasable int
			now      time.Time
		)
		err := tx.QueryRowContext(ctx, s.q(`SELECT (SELECT count(*) FROM {p}proxies WHERE pool_id = pl.id AND status IN ('active', 'slow')),
			UTC_TIMESTAMP(6) FROM {p}pools pl WHERE pl.id = ?`), idArg(poolID)).Scan(&leasable, &now)
		if errors.Is(err, sql.ErrNoRows) {
			return pharox.ErrPoolNotFound
		}
		if err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, s.q(`SELECT t.target,
				coalesce(sum(t.cooling_until > ?), 0),
				coalesce(sum(px.status IN ('active', 'slow') AND t.cooling_until > ?), 0),
				coalesce(sum(t.banned_at >= ?), 0)
			FROM {p}proxies px JOIN {p}proxy_targets t ON t.proxy_id = px.id
			WHERE px.pool_id = ? GROUP BY t.target ORDER BY t.target`), now, now, now.Add(-time.Hour), idArg(poolID))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				st              pharox.TargetStats
				coolingLeasable int
			)
			if err := rows.Scan(&st.Target, &st.CoolingProxies, &coolingLeasable, &st.BansLastHour); err != nil {
				return err
			}
			st.UsableProxies = leasable - coolingLeasable
			out = append(out, &st)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fail("mysql: target stats of pool %s: %w", poolID, err)
	}
	slices.SortFunc(out, func(a, b *pharox.TargetStats) int { return strings.Compare(a.Target, b.Target) })
	return out, nil
}

// PurgeTargetStates deletes the per-target entries that went idle (see
// pharox.TargetState.IdleSince) before idleBefore, through the
// proxy_targets_idle index, in statements of up to purgeBatch rows, and
// returns how many.
func (s *Store) PurgeTargetStates(ctx context.Context, idleBefore time.Time) (int, error) {
	before := micro(idleBefore)
	total := 0
	for {
		res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM {p}proxy_targets WHERE idle_at < ? LIMIT `+fmt.Sprint(purgeBatch)), before)
		if err != nil {
			return total, fail("mysql: purge target states: %w", err)
		}
		n, _ := res.RowsAffected()
		total += int(n)
		if n < purgeBatch {
			return total, nil
		}
	}
}
