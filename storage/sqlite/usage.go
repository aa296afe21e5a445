package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var _ pharox.UsageStore = (*Store)(nil)

// quotaCols lists the quotas columns scanQuota reads, in order.
const quotaCols = `subject, subject_id, max_concurrent_leases, requests_per_minute, bytes_per_day,
	bytes_per_month, day, bytes_today, month, bytes_this_month, tokens, tokens_at, updated_at`

// Statements of the quota and usage paths, named for the EXPLAIN test.
const (
	quotaGetSQL = `SELECT ` + quotaCols + ` FROM quotas WHERE subject = ? AND subject_id = ?`
	// admitConsumerSQL and admitPoolSQL read a subject's quota and, when
	// it caps leases, count the subject's active unexpired leases up to
	// the cap (args: id, now), in one statement: they read at most cap
	// index entries, however many leases the subject has had.
	admitConsumerSQL = `SELECT ` + quotaCols + `, CASE WHEN max_concurrent_leases > 0 THEN (
			SELECT count(*) FROM (SELECT 1 FROM leases INDEXED BY leases_capped_consumer
				WHERE consumer_id = ?1 AND status = 'active' AND consumer_capped = 1 AND expires_at > ?2
				LIMIT (SELECT max_concurrent_leases FROM quotas WHERE subject = 'consumer' AND subject_id = ?1)))
			ELSE 0 END
		FROM quotas WHERE subject = 'consumer' AND subject_id = ?1`
	admitPoolSQL = `SELECT ` + quotaCols + `, CASE WHEN max_concurrent_leases > 0 THEN (
			SELECT count(*) FROM (SELECT 1 FROM leases INDEXED BY leases_active_pool
				WHERE pool_id = ?1 AND status = 'active' AND expires_at > ?2
				LIMIT (SELECT max_concurrent_leases FROM quotas WHERE subject = 'pool' AND subject_id = ?1)))
			ELSE 0 END
		FROM quotas WHERE subject = 'pool' AND subject_id = ?1`
	// markConsumerSQL marks the active leases of a consumer whose quota
	// gains a cap (arg: consumer), walking the active leases pool by
	// pool: a rare administrative write whose cost is the active leases,
	// never the ended ones.
	markConsumerSQL = `UPDATE leases SET consumer_capped = 1 WHERE id IN (
		SELECT l.id FROM pools p CROSS JOIN leases l INDEXED BY leases_active_pool
			ON l.pool_id = p.id AND l.status = 'active'
		WHERE l.consumer_id = ? AND l.consumer_capped = 0)`
	quotaTokensSQL = `UPDATE quotas SET tokens = ?, tokens_at = ? WHERE subject = ? AND subject_id = ?`
	// usageBucketSQL adds one reported lease to its hourly bucket (args:
	// hour, consumer, proxy, pool, target, requests, sent, received).
	usageBucketSQL = `INSERT INTO usage_hourly (hour_start, consumer_id, proxy_id, pool_id, target,
			leases, requests, bytes_sent, bytes_received)
		VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)
		ON CONFLICT (hour_start, consumer_id, proxy_id, target) DO UPDATE SET leases = leases + 1,
			requests = requests + excluded.requests, bytes_sent = bytes_sent + excluded.bytes_sent,
			bytes_received = bytes_received + excluded.bytes_received`
	// usageQuotasSQL reads the quotas a release counts bytes against
	// (args: consumer, pool, proxy): three primary-key probes.
	usageQuotasSQL = `SELECT ` + quotaCols + ` FROM quotas WHERE subject = 'consumer' AND subject_id = ?1
		UNION ALL SELECT ` + quotaCols + ` FROM quotas WHERE subject = 'pool' AND subject_id = ?2
		UNION ALL SELECT ` + quotaCols + ` FROM quotas WHERE subject = 'proxy' AND subject_id = ?3`
	quotaBytesSQL = `UPDATE quotas SET day = ?, bytes_today = ?, month = ?, bytes_this_month = ?
		WHERE subject = ? AND subject_id = ?`
	proxyAllowanceSQL = `UPDATE proxies SET allowance_until = ? WHERE id = ?`
	quotaUpsertSQL    = `INSERT INTO quotas (` + quotaCols + `) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (subject, subject_id) DO UPDATE SET
			max_concurrent_leases = excluded.max_concurrent_leases,
			requests_per_minute = excluded.requests_per_minute, bytes_per_day = excluded.bytes_per_day,
			bytes_per_month = excluded.bytes_per_month, day = excluded.day,
			bytes_today = excluded.bytes_today, month = excluded.month,
			bytes_this_month = excluded.bytes_this_month, tokens = excluded.tokens,
			tokens_at = excluded.tokens_at, updated_at = excluded.updated_at`
	quotaListSQL   = `SELECT ` + quotaCols + ` FROM quotas ORDER BY subject, subject_id`
	quotaDeleteSQL = `DELETE FROM quotas WHERE subject = ? AND subject_id = ?`
	// usagePurgeSQL deletes up to a batch of buckets older than a time
	// (args: before, batch), a range of the primary key.
	usagePurgeSQL = `DELETE FROM usage_hourly WHERE (hour_start, consumer_id, proxy_id, target) IN (
		SELECT hour_start, consumer_id, proxy_id, target FROM usage_hourly WHERE hour_start < ? LIMIT ?)`
)

// quotaSums returns the statement that sums a subject's bucket bytes since
// the day's start and the month's start (args: id, day, month), through
// the index of buckets by that subject and hour.
func quotaSums(subject pharox.QuotaSubject) string {
	col := map[pharox.QuotaSubject]string{
		pharox.QuotaConsumer: "consumer_id", pharox.QuotaPool: "pool_id", pharox.QuotaProxy: "proxy_id",
	}[subject]
	return `SELECT coalesce(sum(CASE WHEN hour_start >= ?2 THEN bytes_sent + bytes_received END), 0),
			coalesce(sum(bytes_sent + bytes_received), 0)
		FROM usage_hourly INDEXED BY usage_hourly_` + strings.TrimSuffix(col, "_id") + `
		WHERE ` + col + ` = ?1 AND hour_start >= ?3`
}

// subjectExistsSQL finds the row a quota names.
var subjectExistsSQL = map[pharox.QuotaSubject]string{
	pharox.QuotaConsumer: `SELECT 1 FROM consumers WHERE id = ?`,
	pharox.QuotaPool:     `SELECT 1 FROM pools WHERE id = ?`,
	pharox.QuotaProxy:    `SELECT 1 FROM proxies WHERE id = ?`,
}

// subjectNotFound is the error for a quota's missing subject.
var subjectNotFound = map[pharox.QuotaSubject]error{
	pharox.QuotaConsumer: pharox.ErrConsumerNotFound,
	pharox.QuotaPool:     pharox.ErrPoolNotFound,
	pharox.QuotaProxy:    pharox.ErrProxyNotFound,
}

// admit applies pharox.Quota.Admit for the quotas of an acquisition's
// consumer and pool, consumer first; the flags say which exist (from
// acquireLookupSQL). It returns the quotas, for takeTokens once a proxy is
// leased, or the first refusal. It runs under the write lock, so the
// leases it counts cannot change before the acquisition commits.
func admit(tx *wtx, consumerID, poolID uuid.UUID, consumerQuota, poolQuota bool, now time.Time) ([]*pharox.Quota, error) {
	if !consumerQuota && !poolQuota {
		return nil, nil
	}
	var quotas []*pharox.Quota
	for _, c := range []struct {
		has   bool
		id    uuid.UUID
		query string
	}{
		{consumerQuota, consumerID, admitConsumerSQL},
		{poolQuota, poolID, admitPoolSQL},
	} {
		if !c.has {
			continue
		}
		var active int
		q, err := scanQuotaAnd(tx.queryRow(c.query, idArg(c.id), micros(now)), &active)
		if err != nil {
			return nil, err
		}
		if err := q.Admit(active, now); err != nil {
			return nil, err
		}
		quotas = append(quotas, q)
	}
	return quotas, nil
}

// consumerCapped reports whether an acquisition's quotas (from admit)
// cap its consumer's leases: the lease then goes into the index the cap
// counts.
func consumerCapped(quotas []*pharox.Quota) bool {
	for _, q := range quotas {
		if q.Subject == pharox.QuotaConsumer && q.MaxConcurrentLeases > 0 {
			return true
		}
	}
	return false
}

// takeTokens takes one token from the request bucket of each quota that
// has one (pharox.Quota.TakeToken).
func takeTokens(tx *wtx, quotas []*pharox.Quota, now time.Time) error {
	for _, q := range quotas {
		if q.RequestsPerMinute <= 0 {
			continue
		}
		t := q.TakeToken(now)
		if _, err := tx.exec(quotaTokensSQL, t.Tokens, micros(t.TokensAt), string(q.Subject), idArg(q.SubjectID)); err != nil {
			return err
		}
	}
	return nil
}

// countUsage counts the usage a release reported for lease l at at: into
// the hourly bucket, and into the byte counters of the quotas of l's
// consumer, pool and proxy (pharox.Quota.AddBytes). A proxy quota's new
// counters set the proxy's allowance_until (pharox.Quota.ExhaustedUntil).
func countUsage(tx *wtx, l *pharox.Lease, u pharox.Usage, at time.Time) error {
	if _, err := tx.exec(usageBucketSQL, micros(at.Truncate(pharox.UsageBucket)), idArg(l.ConsumerID),
		idArg(l.ProxyID), idArg(l.PoolID), l.Target, u.Requests, u.BytesSent, u.BytesReceived); err != nil {
		return err
	}
	n := u.Bytes()
	if n == 0 {
		// Adding nothing would only roll the counters, which every read
		// and the next addition do anyway.
		return nil
	}
	rows, err := tx.query(usageQuotasSQL, idArg(l.ConsumerID), idArg(l.PoolID), idArg(l.ProxyID))
	quotas, err := collect(rows, err, scanQuota)
	if err != nil {
		return err
	}
	for _, q := range quotas {
		c := q.AddBytes(n, at)
		if _, err := tx.exec(quotaBytesSQL, micros(c.Day), c.BytesToday, micros(c.Month), c.BytesThisMonth,
			string(c.Subject), idArg(c.SubjectID)); err != nil {
			return err
		}
		if c.Subject == pharox.QuotaProxy {
			if err := setAllowance(tx, c, at); err != nil {
				return err
			}
		}
	}
	return nil
}

// setAllowance stores on q's proxy when its traffic allowance resets, or
// NULL when it is not used up at now.
func setAllowance(tx *wtx, q pharox.Quota, now time.Time) error {
	var until any
	if t := q.ExhaustedUntil(now); !t.IsZero() {
		until = micros(t)
	}
	_, err := tx.exec(proxyAllowanceSQL, until, idArg(q.SubjectID))
	return err
}

// SetQuota creates or replaces the subject's limits. A new quota's byte
// counters are summed from the subject's buckets of the current day and
// month, and its request bucket starts full; an existing quota keeps its
// counters and tokens (at most the new requests_per_minute). A proxy's
// allowance_until follows its new limits.
func (s *Store) SetQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("sqlite: set quota: %w", err)
	}
	var out pharox.Quota
	err := s.writeTx(ctx, func(tx *wtx) error {
		var one int
		if err := tx.queryRow(subjectExistsSQL[q.Subject], idArg(q.SubjectID)).Scan(&one); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return subjectNotFound[q.Subject]
			}
			return err
		}
		now := s.stamp()
		old, err := scanQuota(tx.queryRow(quotaGetSQL, string(q.Subject), idArg(q.SubjectID)))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			out = pharox.Quota{
				Subject: q.Subject, SubjectID: q.SubjectID, QuotaLimits: q.QuotaLimits,
				Day: pharox.DayStart(now), Month: pharox.MonthStart(now), Tokens: float64(q.RequestsPerMinute),
			}
			if err := tx.queryRow(quotaSums(q.Subject), idArg(q.SubjectID), micros(out.Day), micros(out.Month)).
				Scan(&out.BytesToday, &out.BytesThisMonth); err != nil {
				return err
			}
		case err != nil:
			return err
		default:
			out = old.RollPeriods(now)
			out.QuotaLimits = q.QuotaLimits
			out.Tokens = min(out.Tokens, float64(q.RequestsPerMinute))
		}
		if q.Subject == pharox.QuotaConsumer && q.MaxConcurrentLeases > 0 && (old == nil || old.MaxConcurrentLeases == 0) {
			// From now on the consumer's acquisitions mark their leases
			// (capped); these were taken before.
			if _, err := tx.exec(markConsumerSQL, idArg(q.SubjectID)); err != nil {
				return err
			}
		}
		out.UpdatedAt = now
		if _, err := tx.exec(quotaUpsertSQL, string(out.Subject), idArg(out.SubjectID), out.MaxConcurrentLeases,
			out.RequestsPerMinute, out.BytesPerDay, out.BytesPerMonth, micros(out.Day), out.BytesToday,
			micros(out.Month), out.BytesThisMonth, out.Tokens, nullMicros(timePtr(out.TokensAt)),
			micros(out.UpdatedAt)); err != nil {
			return err
		}
		if out.Subject == pharox.QuotaProxy {
			// Lowered below the counters, the limit holds at once.
			return setAllowance(tx, out, now)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: set %s quota %s: %w", q.Subject, q.SubjectID, err)
	}
	return &out, nil
}

// GetQuota returns the subject's quota with its counters rolled to now.
func (s *Store) GetQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (*pharox.Quota, error) {
	if !subject.Valid() {
		return nil, fmt.Errorf("sqlite: get quota: %w: unknown subject %q (want consumer, pool or proxy)", pharox.ErrInvalidArgument, subject)
	}
	q, err := scanQuota(s.r.QueryRowContext(ctx, quotaGetSQL, string(subject), idArg(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: get %s quota %s: %w", subject, id, pharox.ErrQuotaNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get %s quota %s: %w", subject, id, err)
	}
	r := q.RollPeriods(s.stamp())
	return &r, nil
}

// ListQuotas returns every quota in primary-key order, which is subject
// then id, with counters rolled to now.
func (s *Store) ListQuotas(ctx context.Context) ([]*pharox.Quota, error) {
	rows, err := s.r.QueryContext(ctx, quotaListSQL)
	out, err := collect(rows, err, scanQuota)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list quotas: %w", err)
	}
	now := s.stamp()
	for i, q := range out {
		r := q.RollPeriods(now)
		out[i] = &r
	}
	return out, nil
}

// DeleteQuota removes the subject's quota; a proxy's allowance no longer
// holds it back.
func (s *Store) DeleteQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) error {
	if !subject.Valid() {
		return fmt.Errorf("sqlite: delete quota: %w: unknown subject %q (want consumer, pool or proxy)", pharox.ErrInvalidArgument, subject)
	}
	err := s.writeTx(ctx, func(tx *wtx) error {
		res, err := tx.exec(quotaDeleteSQL, string(subject), idArg(id))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			if err != nil {
				return err
			}
			return pharox.ErrQuotaNotFound
		}
		if subject == pharox.QuotaProxy {
			_, err = tx.exec(proxyAllowanceSQL, nil, idArg(id))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: delete %s quota %s: %w", subject, id, err)
	}
	return nil
}

// usageKey is the bucket column each grouping totals by.
var usageKey = map[pharox.UsageGroup]string{
	pharox.UsageByConsumer: "consumer_id",
	pharox.UsageByProxy:    "proxy_id",
	pharox.UsageByPool:     "pool_id",
	pharox.UsageByTarget:   "target",
}

// usageQuerySQL returns the statement of q and its arguments. A pool or
// consumer filter searches that subject's index of buckets by hour; a
// bare time range searches the primary key, which starts with the hour.
func usageQuerySQL(q pharox.UsageQuery) (string, []any) {
	key := usageKey[q.GroupBy]
	var (
		where []string
		args  []any
	)
	if !q.Since.IsZero() {
		where, args = append(where, "hour_start >= ?"), append(args, ceilMicros(q.Since.Truncate(pharox.UsageBucket)))
	}
	if !q.Until.IsZero() {
		where, args = append(where, "hour_start < ?"), append(args, ceilMicros(q.Until))
	}
	if q.PoolID != uuid.Nil {
		where, args = append(where, "pool_id = ?"), append(args, idArg(q.PoolID))
	}
	if q.ConsumerID != uuid.Nil {
		where, args = append(where, "consumer_id = ?"), append(args, idArg(q.ConsumerID))
	}
	query := `SELECT ` + key + `, sum(leases), sum(requests), sum(bytes_sent), sum(bytes_received) FROM usage_hourly`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	return query + ` GROUP BY ` + key + ` ORDER BY ` + key, args
}

// QueryUsage totals the buckets q selects, one row per group ordered by
// key. It reads the selected buckets only.
func (s *Store) QueryUsage(ctx context.Context, q pharox.UsageQuery) ([]pharox.UsageRow, error) {
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("sqlite: query usage: %w", err)
	}
	query, args := usageQuerySQL(q)
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: query usage: %w", err)
	}
	defer rows.Close()
	out := []pharox.UsageRow{}
	for rows.Next() {
		var r pharox.UsageRow
		if err := rows.Scan(&r.Key, &r.Leases, &r.Requests, &r.BytesSent, &r.BytesReceived); err != nil {
			return nil, fmt.Errorf("sqlite: query usage: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: query usage: %w", err)
	}
	return out, nil
}

// PurgeUsage deletes the buckets that started before before, in
// transactions of purgeBatch buckets so the write lock is never held long.
func (s *Store) PurgeUsage(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for {
		var n int64
		err := s.writeTx(ctx, func(tx *wtx) error {
			res, err := tx.exec(usagePurgeSQL, ceilMicros(before), purgeBatch)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		})
		total += int(n)
		if err != nil {
			return total, fmt.Errorf("sqlite: purge usage: %w", err)
		}
		if n < purgeBatch {
			return total, nil
		}
	}
}

// ceilMicros is t in microseconds, rounded up: hour_start < ceilMicros(t)
// exactly when the bucket started before t.
func ceilMicros(t time.Time) int64 {
	v := micros(t)
	if t.After(fromMicros(v)) {
		v++
	}
	return v
}

// timePtr is t, or nil for the zero time.
func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func scanQuota(sc scanner) (*pharox.Quota, error) { return scanQuotaAnd(sc) }

// scanQuotaAnd reads the quotaCols and then the extra columns.
func scanQuotaAnd(sc scanner, extra ...any) (*pharox.Quota, error) {
	var (
		q                                pharox.Quota
		subject, id                      string
		day, month, updated              int64
		tokensAt                         sql.NullInt64
		maxLeases, rpm, perDay, perMonth int64
	)
	if err := sc.Scan(append([]any{&subject, &id, &maxLeases, &rpm, &perDay, &perMonth, &day, &q.BytesToday,
		&month, &q.BytesThisMonth, &q.Tokens, &tokensAt, &updated}, extra...)...); err != nil {
		return nil, err
	}
	sid, err := uuid.Parse(id)
	if err != nil {
		return nil, fmt.Errorf("corrupt quota subject id %q: %w", id, err)
	}
	q.Subject, q.SubjectID = pharox.QuotaSubject(subject), sid
	q.MaxConcurrentLeases, q.RequestsPerMinute = int(maxLeases), int(rpm)
	q.BytesPerDay, q.BytesPerMonth = perDay, perMonth
	q.Day, q.Month, q.UpdatedAt = fromMicros(day), fromMicros(month), fromMicros(updated)
	if tokensAt.Valid {
		q.TokensAt = fromMicros(tokensAt.Int64)
	}
	return &q, nil
}
