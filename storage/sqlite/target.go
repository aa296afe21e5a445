package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var _ pharox.TargetStore = (*Store)(nil)

// targetCols lists the proxy_targets columns scanTargetState reads.
const targetCols = `proxy_id, target, failure_streak, bans, cooling_until, banned_at, last_reason,
	last_status_code, last_success_at, last_failure_at, updated_at`

// Statements of ApplyTargetOutcome, named for the EXPLAIN test.
const (
	targetGetSQL   = `SELECT ` + targetCols + ` FROM proxy_targets WHERE proxy_id = ? AND target = ?`
	targetCountSQL = `SELECT count(*) FROM proxy_targets WHERE proxy_id = ?`
	// targetEvictSQL drops the proxy's longest-idle entries (args: proxy,
	// proxy, how many); it sorts at most MaxTargetsPerProxy rows.
	targetEvictSQL = `DELETE FROM proxy_targets WHERE proxy_id = ? AND target IN (
		SELECT target FROM proxy_targets WHERE proxy_id = ? ORDER BY idle_since, target LIMIT ?)`
	targetUpsertSQL = `INSERT INTO proxy_targets (proxy_id, target, failure_streak, bans, cooling_until,
		banned_at, last_reason, last_status_code, last_success_at, last_failure_at, updated_at, idle_since)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (proxy_id, target) DO UPDATE SET failure_streak = excluded.failure_streak,
			bans = excluded.bans, cooling_until = excluded.cooling_until, banned_at = excluded.banned_at,
			last_reason = excluded.last_reason, last_status_code = excluded.last_status_code,
			last_success_at = excluded.last_success_at, last_failure_at = excluded.last_failure_at,
			updated_at = excluded.updated_at, idle_since = excluded.idle_since`
	targetRecentSQL = `SELECT count(*) FROM proxy_targets WHERE proxy_id = ? AND banned_at >= ?`
	targetPurgeSQL  = `DELETE FROM proxy_targets WHERE (proxy_id, target) IN (
		SELECT proxy_id, target FROM proxy_targets WHERE idle_since < ? LIMIT ?)`
)

// ApplyTargetOutcome applies o to its (proxy, target) row following
// [pharox.TargetState.Apply], in one write transaction: read the row,
// evict the proxy's longest-idle rows beyond p.MaxTargetsPerProxy when
// the target is new, write the new state and count the proxy's recent
// cool-downs.
func (s *Store) ApplyTargetOutcome(ctx context.Context, o pharox.TargetOutcome, p pharox.TargetPolicy) (*pharox.TargetState, int, error) {
	if err := o.Validate(); err != nil {
		return nil, 0, fmt.Errorf("sqlite: apply target outcome: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, 0, fmt.Errorf("sqlite: apply target outcome: %w", err)
	}
	var (
		out    pharox.TargetState
		recent int
	)
	err := s.writeTx(ctx, func(tx *wtx) error {
		var one int
		if err := tx.queryRow(`SELECT 1 FROM proxies WHERE id = ?`, idArg(o.ProxyID)).Scan(&one); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("proxy %s: %w", o.ProxyID, pharox.ErrProxyNotFound)
			}
			return err
		}
		now := s.stamp()
		if !o.At.IsZero() {
			now = o.At.UTC().Truncate(time.Microsecond)
		}
		old, err := scanTargetState(tx.queryRow(targetGetSQL, idArg(o.ProxyID), o.Target))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			old = &pharox.TargetState{}
			var n int
			if err := tx.queryRow(targetCountSQL, idArg(o.ProxyID)).Scan(&n); err != nil {
				return err
			}
			if n >= p.MaxTargetsPerProxy {
				if _, err := tx.exec(targetEvictSQL, idArg(o.ProxyID), idArg(o.ProxyID), n-p.MaxTargetsPerProxy+1); err != nil {
					return err
				}
			}
		case err != nil:
			return err
		}
		out = old.Apply(o, p, now)
		if _, err := tx.exec(targetUpsertSQL, idArg(out.ProxyID), out.Target, out.FailureStreak, out.Bans,
			nullMicros(out.CoolingUntil), nullMicros(out.BannedAt), out.LastReason, out.LastStatusCode,
			nullMicros(out.LastSuccessAt), nullMicros(out.LastFailureAt), micros(out.UpdatedAt), micros(out.IdleSince())); err != nil {
			return err
		}
		return tx.queryRow(targetRecentSQL, idArg(o.ProxyID), micros(now.Add(-p.EscalateWindow))).Scan(&recent)
	})
	if err != nil {
		return nil, 0, fmt.Errorf("sqlite: apply target outcome: %w", err)
	}
	return &out, recent, nil
}

// nullMicros is a nullable timestamp argument.
func nullMicros(t *time.Time) any {
	if t == nil {
		return nil
	}
	return micros(*t)
}

func scanTargetState(sc scanner) (*pharox.TargetState, error) {
	var (
		st                                pharox.TargetState
		proxyID                           string
		cooling, banned, success, failure sql.NullInt64
		updated                           int64
	)
	if err := sc.Scan(&proxyID, &st.Target, &st.FailureStreak, &st.Bans, &cooling, &banned, &st.LastReason,
		&st.LastStatusCode, &success, &failure, &updated); err != nil {
		return nil, err
	}
	id, err := uuid.Parse(proxyID)
	if err != nil {
		return nil, fmt.Errorf("corrupt proxy id %q: %w", proxyID, err)
	}
	st.ProxyID = id
	opt := func(v sql.NullInt64) *time.Time {
		if !v.Valid {
			return nil
		}
		t := fromMicros(v.Int64)
		return &t
	}
	st.CoolingUntil, st.BannedAt, st.LastSuccessAt, st.LastFailureAt = opt(cooling), opt(banned), opt(success), opt(failure)
	st.UpdatedAt = fromMicros(updated)
	return &st, nil
}

// ListTargetStates returns the proxy's entries ordered by target.
func (s *Store) ListTargetStates(ctx context.Context, proxyID uuid.UUID) ([]*pharox.TargetState, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("sqlite: list target states: %w", err)
	}
	defer tx.Rollback()
	var one int
	if err := tx.QueryRowContext(ctx, `SELECT 1 FROM proxies WHERE id = ?`, idArg(proxyID)).Scan(&one); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			err = pharox.ErrProxyNotFound
		}
		return nil, fmt.Errorf("sqlite: list target states: proxy %s: %w", proxyID, err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+targetCols+` FROM proxy_targets WHERE proxy_id = ? ORDER BY target`, idArg(proxyID))
	out, err := collect(rows, err, scanTargetState)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list target states: %w", err)
	}
	return out, nil
}

// poolTargetStatsSQL counts per target over the pool's proxies' rows
// (args: now, an hour ago, now, pool).
const poolTargetStatsSQL = `SELECT t.target,
		sum(t.cooling_until > ?),
		sum(t.banned_at >= ?),
		sum(t.cooling_until > ? AND p.status IN ('active', 'slow'))
	FROM proxies p JOIN proxy_targets t ON t.proxy_id = p.id
	WHERE p.pool_id = ?
	GROUP BY t.target ORDER BY t.target`

// PoolTargetStats returns per-target health of the pool, ordered by
// target. It reads every row of the pool's proxies: an admin read.
func (s *Store) PoolTargetStats(ctx context.Context, poolID uuid.UUID) ([]*pharox.TargetStats, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("sqlite: pool target stats: %w", err)
	}
	defer tx.Rollback()
	var leasable int
	err = tx.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM proxies WHERE pool_id = ? AND status IN ('active', 'slow'))
		FROM pools WHERE id = ?`, idArg(poolID), idArg(poolID)).Scan(&leasable)
	if errors.Is(err, sql.ErrNoRows) {
		err = pharox.ErrPoolNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: pool target stats: pool %s: %w", poolID, err)
	}
	now := s.stamp()
	rows, err := tx.QueryContext(ctx, poolTargetStatsSQL, micros(now), micros(now.Add(-time.Hour)), micros(now), idArg(poolID))
	if err != nil {
		return nil, fmt.Errorf("sqlite: pool target stats: %w", err)
	}
	defer rows.Close()
	out := []*pharox.TargetStats{}
	for rows.Next() {
		var (
			ts                      pharox.TargetStats
			cooling, bans, leasCool sql.NullInt64
		)
		if err := rows.Scan(&ts.Target, &cooling, &bans, &leasCool); err != nil {
			return nil, fmt.Errorf("sqlite: pool target stats: %w", err)
		}
		ts.CoolingProxies, ts.BansLastHour = int(cooling.Int64), int(bans.Int64)
		ts.UsableProxies = leasable - int(leasCool.Int64)
		out = append(out, &ts)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: pool target stats: %w", err)
	}
	return out, nil
}

// targetPurgeBatch bounds the rows one purge transaction deletes, so the write
// lock is never held for long.
const targetPurgeBatch = 1000

// PurgeTargetStates deletes entries idle since before idleBefore, in
// batches through the idle_since index.
func (s *Store) PurgeTargetStates(ctx context.Context, idleBefore time.Time) (int, error) {
	total := 0
	for {
		var n int64
		err := s.writeTx(ctx, func(tx *wtx) error {
			res, err := tx.exec(targetPurgeSQL, micros(idleBefore), targetPurgeBatch)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		})
		if err != nil {
			return total, fmt.Errorf("sqlite: purge target states: %w", err)
		}
		total += int(n)
		if n < targetPurgeBatch {
			return total, nil
		}
	}
}
