package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pharox/pharox"
)

// The reference rules of pharox.Quota, in SQL. The statements that enforce
// and count quotas run them on the database's side, where the rows are
// locked, so that an acquisition or a release stays one statement; each
// expression below mirrors its Go rule operation for operation (the
// floating-point ones too, so that the token bucket decides exactly as
// Quota.Admit would), and TestQuotaSQLMatchesReference checks them
// against the Go rules on random quotas and times. t is a timestamptz
// expression ("now"), q a quotas row alias.

// dayStartSQL is pharox.DayStart(t).
func dayStartSQL(t string) string { return "date_trunc('day', " + t + ", 'UTC')" }

// monthStartSQL is pharox.MonthStart(t).
func monthStartSQL(t string) string { return "date_trunc('month', " + t + ", 'UTC')" }

// nextDaySQL and nextMonthSQL are d.AddDate(0, 0, 1) and m.AddDate(0, 1, 0)
// in UTC, whatever the session's time zone.
func nextDaySQL(d string) string {
	return "((" + d + " AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC'"
}

func nextMonthSQL(m string) string {
	return "((" + m + " AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'"
}

// todaySQL and thisMonthSQL are the byte counters of Quota.RollPeriods(t).
func todaySQL(q, t string) string {
	return "CASE WHEN " + q + ".day = " + dayStartSQL(t) + " THEN " + q + ".bytes_today ELSE 0 END"
}

func thisMonthSQL(q, t string) string {
	return "CASE WHEN " + q + ".month = " + monthStartSQL(t) + " THEN " + q + ".bytes_this_month ELSE 0 END"
}

// refillSQL is Quota.RefillTokens(t): elapsed is a whole number of
// microseconds (both times are), and Duration.Minutes is whole minutes
// plus the remaining nanoseconds over 6e10, as here.
func refillSQL(q, t string) string {
	us := "greatest((extract(epoch from (" + t + " - " + q + ".tokens_at)) * 1000000)::bigint, 0)"
	rpm := q + ".requests_per_minute::float8"
	return "CASE WHEN " + q + ".tokens_at IS NULL THEN " + rpm +
		" ELSE least(" + rpm + ", " + q + ".tokens + ((" + us + " / 60000000)::float8 + ((" + us + " % 60000000) * 1000)::float8 / 60000000000::float8) * " + rpm + ") END"
}

// limitSQL is the limit Quota.Admit refuses, by name, or NULL: over a row
// q that carries, besides the quota's columns, today, this_month, refill
// and active (see quotaRowsSQL).
func limitSQL(q string) string {
	return "CASE" +
		" WHEN " + q + ".max_concurrent_leases > 0 AND " + q + ".active >= " + q + ".max_concurrent_leases THEN '" + pharox.LimitMaxConcurrentLeases + "'" +
		" WHEN " + q + ".bytes_per_day > 0 AND " + q + ".today >= " + q + ".bytes_per_day THEN '" + pharox.LimitBytesPerDay + "'" +
		" WHEN " + q + ".bytes_per_month > 0 AND " + q + ".this_month >= " + q + ".bytes_per_month THEN '" + pharox.LimitBytesPerMonth + "'" +
		" WHEN " + q + ".requests_per_minute > 0 AND " + q + ".refill < 1 THEN '" + pharox.LimitRequestsPerMinute + "'" +
		" END"
}

// exhaustedUntilSQL is Quota.ExhaustedUntil for a row whose counters are
// already rolled to now (a row just updated by addBytesSQL), NULL for
// the zero time.
func exhaustedUntilSQL(q string) string {
	return "CASE" +
		" WHEN " + q + ".bytes_per_month > 0 AND " + q + ".bytes_this_month >= " + q + ".bytes_per_month THEN " + nextMonthSQL(q+".month") +
		" WHEN " + q + ".bytes_per_day > 0 AND " + q + ".bytes_today >= " + q + ".bytes_per_day THEN " + nextDaySQL(q+".day") +
		" END"
}

// addBytesSQL is the SET list of Quota.AddBytes(n, t) over quotas alias q.
func addBytesSQL(q, n, t string) string {
	return "day = " + dayStartSQL(t) + ", bytes_today = " + todaySQL(q, t) + " + " + n +
		", month = " + monthStartSQL(t) + ", bytes_this_month = " + thisMonthSQL(q, t) + " + " + n
}

// activeSQL counts the subject's active, unexpired leases at t, through
// leases_active_consumer or leases_active_pool, and at most its
// max_concurrent_leases of them: all Admit needs to know, so the count
// costs at most the cap, never the pool. NULL when the quota sets no cap.
// (When the statistics say that every lease is of one pool, the planner
// walks leases_active_expiry instead, which then costs the same.)
func activeSQL(q, t string) string {
	count := func(col string) string {
		return "(SELECT count(*) FROM (SELECT 1 FROM {s}.leases x WHERE x." + col + " = " + q + ".subject_id AND x.status = 'active'" +
			" AND x.expires_at > " + t + " LIMIT " + q + ".max_concurrent_leases) z)"
	}
	return "CASE WHEN " + q + ".max_concurrent_leases > 0 THEN CASE WHEN " + q + ".subject = 'consumer' THEN " +
		count("consumer_id") + " ELSE " + count("pool_id") + " END END"
}

// quotaRowsSQL selects the quota rows matched by where, with today,
// this_month, refill and active as of the time in CTE qn (column t), see
// limitSQL.
func quotaRowsSQL(where string) string {
	const t = "qn.t"
	return "SELECT q.subject, q.subject_id, q.max_concurrent_leases, q.requests_per_minute, q.bytes_per_day, q.bytes_per_month," +
		" q.day, q.bytes_today, q.month, q.bytes_this_month, q.tokens, q.tokens_at," +
		" " + todaySQL("q", t) + " AS today, " + thisMonthSQL("q", t) + " AS this_month, " + refillSQL("q", t) + " AS refill, " +
		activeSQL("q", t) + " AS active FROM {s}.quotas q CROSS JOIN qn WHERE " + where
}

// quotaColumns are the quotas columns every read selects, in the order of
// quotaRow.dest.
const quotaColumns = "subject, subject_id, max_concurrent_leases, requests_per_minute, bytes_per_day, bytes_per_month, " +
	"day, bytes_today, month, bytes_this_month, tokens, tokens_at, updated_at"

// quotaRow receives one quotas row. The JSON names are the columns' (the
// refusal of an acquisition carries its rows as JSON, see quotaRefusal).
type quotaRow struct {
	Subject        string     `json:"subject"`
	SubjectID      uuid.UUID  `json:"subject_id"`
	MaxConcurrent  int32      `json:"max_concurrent_leases"`
	RPM            int32      `json:"requests_per_minute"`
	BytesPerDay    int64      `json:"bytes_per_day"`
	BytesPerMonth  int64      `json:"bytes_per_month"`
	Day            time.Time  `json:"day"`
	BytesToday     int64      `json:"bytes_today"`
	Month          time.Time  `json:"month"`
	BytesThisMonth int64      `json:"bytes_this_month"`
	Tokens         float64    `json:"tokens"`
	TokensAt       *time.Time `json:"tokens_at"`
	UpdatedAt      time.Time  `json:"updated_at"`
	// Active is the subject's active leases an acquisition counted (up to
	// the cap), in a refusal only.
	Active *int64 `json:"active"`
}

func (r *quotaRow) dest() []any {
	return []any{&r.Subject, &r.SubjectID, &r.MaxConcurrent, &r.RPM, &r.BytesPerDay, &r.BytesPerMonth,
		&r.Day, &r.BytesToday, &r.Month, &r.BytesThisMonth, &r.Tokens, &r.TokensAt, &r.UpdatedAt}
}

func (r *quotaRow) quota() *pharox.Quota {
	q := &pharox.Quota{
		Subject: pharox.QuotaSubject(r.Subject), SubjectID: r.SubjectID,
		QuotaLimits: pharox.QuotaLimits{
			MaxConcurrentLeases: int(r.MaxConcurrent), RequestsPerMinute: int(r.RPM),
			BytesPerDay: r.BytesPerDay, BytesPerMonth: r.BytesPerMonth,
		},
		Day: utc(r.Day), BytesToday: r.BytesToday, Month: utc(r.Month), BytesThisMonth: r.BytesThisMonth,
		Tokens: r.Tokens, UpdatedAt: utc(r.UpdatedAt),
	}
	if r.TokensAt != nil {
		q.TokensAt = utc(*r.TokensAt)
	}
	return q
}

// quotaRefusal is what an acquisition statement reports when its consumer
// or pool quota refused it (see acquireStatement): the time it decided
// at and the rows it decided on.
type quotaRefusal struct {
	Now    time.Time  `json:"now"`
	Quotas []quotaRow `json:"quotas"`
	// Limit is the subject and limit the statement refused with, as
	// "consumer max_concurrent_leases".
	Limit string `json:"limit"`
}

// quotaError turns the refusal the statement reported into the QuotaError
// of the reference rule, consumer first: Quota.Admit on the same rows,
// counts and time gives the limit and RetryAfter. Should the rule admit
// what the statement refused (which the SQL mirrors exactly, see
// refillSQL), the limit the statement named is reported with a RetryAfter
// of a millisecond.
func quotaError(raw []byte) error {
	var r quotaRefusal
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("postgres: acquire: read quota refusal: %w", err)
	}
	now := utc(r.Now)
	for _, subject := range []pharox.QuotaSubject{pharox.QuotaConsumer, pharox.QuotaPool} {
		for i := range r.Quotas {
			row := &r.Quotas[i]
			if pharox.QuotaSubject(row.Subject) != subject {
				continue
			}
			active := 0
			if row.Active != nil {
				active = int(*row.Active)
			}
			if err := row.quota().Admit(active, now); err != nil {
				return err
			}
		}
	}
	subject, limit, _ := strings.Cut(r.Limit, " ")
	qe := &pharox.QuotaError{Subject: pharox.QuotaSubject(subject), Limit: limit, RetryAfter: time.Millisecond}
	for i := range r.Quotas {
		if row := r.Quotas[i].quota(); row.Subject == qe.Subject {
			qe.SubjectID = row.SubjectID
			qe.Value = map[string]int64{
				pharox.LimitMaxConcurrentLeases: int64(row.MaxConcurrentLeases), pharox.LimitRequestsPerMinute: int64(row.RequestsPerMinute),
				pharox.LimitBytesPerDay: row.BytesPerDay, pharox.LimitBytesPerMonth: row.BytesPerMonth,
			}[limit]
		}
	}
	return qe
}

// quotaHints remembers the consumers and pools this Store saw a quota for,
// so that their acquisitions go straight to the statements that lock and
// check quotas. It is only a hint: the plain statements check that their
// consumer and pool have no quota (one primary-key probe each) and take
// nothing when they have, and the quota statements work on subjects
// without one. It holds only subjects with quotas, and forgets one when
// a quota statement finds its quota gone.
type quotaHints struct {
	consumers sync.Map // uuid.UUID -> struct{}
	pools     sync.Map // pool name -> struct{}
}

// has reports whether req's consumer or pool was seen with a quota.
func (h *quotaHints) has(req *pharox.AcquireRequest) bool {
	if _, ok := h.consumers.Load(req.ConsumerID); ok {
		return true
	}
	_, ok := h.pools.Load(req.PoolName)
	return ok
}

// note records whether req's consumer and pool have a quota.
func (h *quotaHints) note(req *pharox.AcquireRequest, consumer, pool bool) {
	if consumer {
		h.consumers.Store(req.ConsumerID, struct{}{})
	} else {
		h.consumers.Delete(req.ConsumerID)
	}
	if pool {
		h.pools.Store(req.PoolName, struct{}{})
	} else {
		h.pools.Delete(req.PoolName)
	}
}

// quotaLockSQL locks the quota rows of a consumer ($1) and a pool (by name,
// $2) FOR UPDATE, consumer first: the statement that precedes a quota
// acquisition in its transaction (see tryAcquire). Every transaction that
// locks several quota rows locks them in (subject, subject_id) order, and
// quota rows before proxy rows.
const quotaLockSQL = `SELECT q.subject FROM {s}.quotas q
WHERE (q.subject = 'consumer' AND q.subject_id = $1)
   OR (q.subject = 'pool' AND q.subject_id = (SELECT p.id FROM {s}.pools p WHERE p.name = $2))
ORDER BY q.subject
FOR UPDATE OF q`

// quotaBatchLockSQL is quotaLockSQL for a batch: the quota rows of the
// consumers $1 (uuid[]) and of the pool named $2, in (subject, id) order.
const quotaBatchLockSQL = `SELECT q.subject FROM {s}.quotas q
WHERE (q.subject = 'consumer' AND q.subject_id = ANY ($1::uuid[]))
   OR (q.subject = 'pool' AND q.subject_id = (SELECT p.id FROM {s}.pools p WHERE p.name = $2))
ORDER BY q.subject, q.subject_id
FOR UPDATE OF q`

// SetQuota creates or replaces the subject's limits in one transaction:
// the quota row is locked (FOR UPDATE) and the time read after the lock;
// a new quota's counters are summed from the subject's hourly buckets of
// the current day and month; the row is upserted; and the subject is
// checked: a consumer must exist, a pool is locked FOR KEY SHARE (so a
// concurrent DeletePool either deletes this quota or fails to find the
// pool here), and a proxy's allowance_until is set from the quota
// (Quota.ExhaustedUntil), which also locks the proxy row. Quota rows are
// locked before pool and proxy rows, as everywhere.
func (s *Store) SetQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	var out *pharox.Quota
	var endErr error
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var old quotaRow
		found := true
		err := tx.QueryRow(ctx, s.q(`SELECT `+quotaColumns+` FROM {s}.quotas WHERE subject = $1 AND subject_id = $2 FOR UPDATE`),
			string(q.Subject), q.SubjectID).Scan(old.dest()...)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			found = false
		case err != nil:
			return err
		}
		var now time.Time
		if err := tx.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now); err != nil {
			return err
		}
		now = utc(now)
		var next pharox.Quota
		if found {
			next = old.quota().RollPeriods(now)
			next.QuotaLimits = q.QuotaLimits
			next.Tokens = min(next.Tokens, float64(q.RequestsPerMinute))
		} else {
			next = pharox.Quota{Subject: q.Subject, SubjectID: q.SubjectID, QuotaLimits: q.QuotaLimits,
				Day: pharox.DayStart(now), Month: pharox.MonthStart(now), Tokens: float64(q.RequestsPerMinute)}
			col := map[pharox.QuotaSubject]string{pharox.QuotaConsumer: "consumer_id", pharox.QuotaPool: "pool_id", pharox.QuotaProxy: "proxy_id"}[q.Subject]
			// MonthStart <= DayStart: one range over the month's buckets.
			err := tx.QueryRow(ctx, s.q(`SELECT coalesce(sum(bytes_sent + bytes_received) FILTER (WHERE hour_start >= $3), 0)::bigint,
	coalesce(sum(bytes_sent + bytes_received), 0)::bigint
FROM {s}.usage_hourly WHERE `+col+` = $1 AND hour_start >= $2`), q.SubjectID, next.Month, next.Day).Scan(&next.BytesToday, &next.BytesThisMonth)
			if err != nil {
				return err
			}
		}
		next.UpdatedAt = now
		var tokensAt *time.Time
		if !next.TokensAt.IsZero() {
			tokensAt = &next.TokensAt
		}
		_, err = tx.Exec(ctx, s.q(`INSERT INTO {s}.quotas (`+quotaColumns+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (subject, subject_id) DO UPDATE SET
	max_concurrent_leases = excluded.max_concurrent_leases, requests_per_minute = excluded.requests_per_minute,
	bytes_per_day = excluded.bytes_per_day, bytes_per_month = excluded.bytes_per_month,
	day = excluded.day, bytes_today = excluded.bytes_today, month = excluded.month, bytes_this_month = excluded.bytes_this_month,
	tokens = excluded.tokens, tokens_at = excluded.tokens_at, updated_at = excluded.updated_at`),
			string(next.Subject), next.SubjectID, int32(next.MaxConcurrentLeases), int32(next.RequestsPerMinute), next.BytesPerDay, next.BytesPerMonth,
			next.Day, next.BytesToday, next.Month, next.BytesThisMonth, next.Tokens, tokensAt, next.UpdatedAt)
		if err != nil {
			return err
		}
		var sql string
		var args []any
		var missing error
		switch q.Subject {
		case pharox.QuotaConsumer:
			sql, args, missing = `SELECT 1 FROM {s}.consumers WHERE id = $1`, []any{q.SubjectID}, pharox.ErrConsumerNotFound
		case pharox.QuotaPool:
			sql, args, missing = `SELECT 1 FROM {s}.pools WHERE id = $1 FOR KEY SHARE`, []any{q.SubjectID}, pharox.ErrPoolNotFound
		default:
			var until *time.Time
			if u := next.ExhaustedUntil(now); !u.IsZero() {
				until = &u
			}
			sql, args, missing = `UPDATE {s}.proxies SET allowance_until = $2 WHERE id = $1 RETURNING 1`, []any{q.SubjectID, until}, pharox.ErrProxyNotFound
		}
		var one int
		switch err := tx.QueryRow(ctx, s.q(sql), args...).Scan(&one); {
		case errors.Is(err, pgx.ErrNoRows):
			endErr = missing
			return errRollback
		case err != nil:
			return err
		}
		out = &next
		return nil
	})
	if endErr != nil {
		return nil, fmt.Errorf("postgres: set quota of %s %s: %w", q.Subject, q.SubjectID, endErr)
	}
	if err != nil {
		if pgCode(err) == codeCheckViolation || pgCode(err) == codeNumericOutOfRange {
			err = fmt.Errorf("%w: %v", pharox.ErrInvalidArgument, err)
		}
		return nil, fmt.Errorf("postgres: set quota of %s %s: %w", q.Subject, q.SubjectID, err)
	}
	return out, nil
}

// codeNumericOutOfRange is the error of a value too large for its column.
const codeNumericOutOfRange = "22003"

// GetQuota returns the subject's quota with its counters rolled to the
// database's clock.
func (s *Store) GetQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (*pharox.Quota, error) {
	var r quotaRow
	var now time.Time
	err := s.pool.QueryRow(ctx, s.q(`SELECT `+quotaColumns+`, clock_timestamp() FROM {s}.quotas WHERE subject = $1 AND subject_id = $2`),
		string(subject), id).Scan(append(r.dest(), &now)...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get quota of %s %s: %w", subject, id, pharox.ErrQuotaNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get quota of %s %s: %w", subject, id, err)
	}
	q := r.quota().RollPeriods(utc(now))
	return &q, nil
}

// ListQuotas returns every quota ordered by subject, then id (uuid order
// is the order of its text), counters rolled to the database's clock.
func (s *Store) ListQuotas(ctx context.Context) ([]*pharox.Quota, error) {
	rows, err := s.pool.Query(ctx, s.q(`SELECT `+quotaColumns+`, clock_timestamp() FROM {s}.quotas ORDER BY subject COLLATE "C", subject_id`))
	if err != nil {
		return nil, fmt.Errorf("postgres: list quotas: %w", err)
	}
	defer rows.Close()
	out := []*pharox.Quota{}
	for rows.Next() {
		var r quotaRow
		var now time.Time
		if err := rows.Scan(append(r.dest(), &now)...); err != nil {
			return nil, fmt.Errorf("postgres: list quotas: %w", err)
		}
		q := r.quota().RollPeriods(utc(now))
		out = append(out, &q)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list quotas: %w", err)
	}
	return out, nil
}

// DeleteQuota removes the subject's quota in one statement; a proxy's
// allowance_until is cleared with it (quota row first, then the proxy).
func (s *Store) DeleteQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) error {
	if !subject.Valid() {
		return fmt.Errorf("%w: quota: unknown subject %q (want consumer, pool or proxy)", pharox.ErrInvalidArgument, subject)
	}
	var n int
	err := s.pool.QueryRow(ctx, s.q(`WITH d AS (
	DELETE FROM {s}.quotas WHERE subject = $1 AND subject_id = $2 RETURNING subject, subject_id
), p AS (
	UPDATE {s}.proxies p SET allowance_until = NULL FROM d WHERE d.subject = 'proxy' AND p.id = d.subject_id
)
SELECT count(*)::integer FROM d`), string(subject), id).Scan(&n)
	if err != nil {
		return fmt.Errorf("postgres: delete quota of %s %s: %w", subject, id, err)
	}
	if n == 0 {
		return fmt.Errorf("postgres: delete quota of %s %s: %w", subject, id, pharox.ErrQuotaNotFound)
	}
	return nil
}

// usageKeys are the SQL expressions of the QueryUsage groupings.
var usageKeys = map[pharox.UsageGroup]string{
	pharox.UsageByConsumer: "consumer_id::text",
	pharox.UsageByProxy:    "proxy_id::text",
	pharox.UsageByPool:     "pool_id::text",
	pharox.UsageByTarget:   "target",
}

// QueryUsage totals the selected hourly buckets in one statement: a range
// of the primary key (hour_start first), or of usage_hourly_pool or
// usage_hourly_consumer when the query names a pool or a consumer.
func (s *Store) QueryUsage(ctx context.Context, q pharox.UsageQuery) ([]pharox.UsageRow, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	sql, vals := s.usageQuerySQL(q)
	// Planned per call (see reclaimSQL): the table grows without bound.
	rows, err := s.pool.Query(ctx, s.q(sql), append([]any{pgx.QueryExecModeExec}, vals...)...)
	if err != nil {
		return nil, fmt.Errorf("postgres: query usage: %w", err)
	}
	defer rows.Close()
	out := []pharox.UsageRow{}
	for rows.Next() {
		var r pharox.UsageRow
		if err := rows.Scan(&r.Key, &r.Leases, &r.Requests, &r.BytesSent, &r.BytesReceived); err != nil {
			return nil, fmt.Errorf("postgres: query usage: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: query usage: %w", err)
	}
	return out, nil
}

// usageQuerySQL returns the statement of QueryUsage for a valid q and its
// bind values.
func (s *Store) usageQuerySQL(q pharox.UsageQuery) (string, []any) {
	key := usageKeys[q.GroupBy]
	a := &args{}
	var conds []string
	if !q.Since.IsZero() {
		conds = append(conds, "hour_start >= "+a.add(q.Since.Truncate(pharox.UsageBucket))+"::timestamptz")
	}
	if !q.Until.IsZero() {
		conds = append(conds, "hour_start < "+a.add(microCeil(q.Until))+"::timestamptz")
	}
	if q.PoolID != uuid.Nil {
		conds = append(conds, "pool_id = "+a.add(q.PoolID)+"::uuid")
	}
	if q.ConsumerID != uuid.Nil {
		conds = append(conds, "consumer_id = "+a.add(q.ConsumerID)+"::uuid")
	}
	sql := `SELECT ` + key + `, sum(leases)::bigint, sum(requests)::bigint, sum(bytes_sent)::bigint, sum(bytes_received)::bigint FROM {s}.usage_hourly`
	if len(conds) > 0 {
		sql += " WHERE " + strings.Join(conds, " AND ")
	}
	sql += " GROUP BY " + key + " ORDER BY " + key + ` COLLATE "C"`
	return sql, a.vals
}

// PurgeUsage deletes the buckets that started before the given time.
func (s *Store) PurgeUsage(ctx context.Context, before time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, s.q(`DELETE FROM {s}.usage_hourly WHERE hour_start < $1`), pgx.QueryExecModeExec, microCeil(before))
	if err != nil {
		return 0, fmt.Errorf("postgres: purge usage: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// microCeil rounds t up to a microsecond, PostgreSQL's precision: bucket
// starts are whole microseconds, so start < microCeil(t) exactly when
// start < t (pgx would truncate t, and a bucket starting within a
// microsecond below t would then not count).
func microCeil(t time.Time) time.Time {
	c := t.Truncate(time.Microsecond)
	if c.Before(t) {
		c = c.Add(time.Microsecond)
	}
	return c
}
