package mysql

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

func scanQuota(sc scanner, extra ...any) (*pharox.Quota, error) {
	var (
		q        pharox.Quota
		subject  string
		tokensAt sql.NullTime
	)
	dest := []any{&subject, &q.SubjectID, &q.MaxConcurrentLeases, &q.RequestsPerMinute, &q.BytesPerDay,
		&q.BytesPerMonth, &q.Day, &q.BytesToday, &q.Month, &q.BytesThisMonth, &q.Tokens, &tokensAt, &q.UpdatedAt}
	if err := sc.Scan(append(dest, extra...)...); err != nil {
		return nil, err
	}
	q.Subject = pharox.QuotaSubject(subject)
	q.Day, q.Month, q.UpdatedAt = utc(q.Day), utc(q.Month), utc(q.UpdatedAt)
	if tokensAt.Valid {
		q.TokensAt = utc(tokensAt.Time)
	}
	return &q, nil
}

// quotaKey names a quota row: a subject and its id.
func quotaKey(q *pharox.Quota) []any { return []any{string(q.Subject), idArg(q.SubjectID)} }

// quotaPair is a consumer and a pool an acquisition involves.
type quotaPair struct{ consumer, pool uuid.UUID }

// quotaProbeSQL is a column telling whether the consumer (the first
// parameter) or the pool (the second) has a quota: two primary-key probes,
// the one cost an acquisition pays for quotas when there are none.
const quotaProbeSQL = `EXISTS (SELECT 1 FROM {p}quotas WHERE subject = 'consumer' AND subject_id = ? OR subject = 'pool' AND subject_id = ?)`

// noteQuotas records what an acquisition learnt about the pair's quotas:
// the next acquisition for the pair starts by locking them when they
// exist (see acquireTx).
func (s *Store) noteQuotas(p quotaPair, exist bool) {
	if exist {
		s.quotaPairs.Store(p, struct{}{})
	} else {
		s.quotaPairs.Delete(p)
	}
}

// quotaHinted reports whether the pair had a quota when an acquisition
// last looked.
func (s *Store) quotaHinted(p quotaPair) bool {
	_, ok := s.quotaPairs.Load(p)
	return ok
}

// quotaLock is the consumer's and pool's quotas an acquisition holds
// locked, consumer first, with the clock at which it counted their active
// leases.
type quotaLock struct {
	now    time.Time
	quotas []*pharox.Quota
	active map[pharox.QuotaSubject]int
}

// stmtLead is statements sent ahead of another one in the same round trip
// (see queryEach), with the reader of their results.
type stmtLead struct {
	queries []string
	args    [][]any
	read    func(i int, rows *sql.Rows) error
}

// quotaLead is the statements that lock the quota rows of the consumer
// and the pool FOR UPDATE (in primary key order: consumer, then pool) and
// then count the active, unexpired leases of each that has a
// max_concurrent_leases, through leases_consumer_active and leases_pool;
// they fill in ql, and ql.finish completes it. The count is a statement of
// its own, after the lock: in READ COMMITTED it then sees every lease that
// the acquisitions which held the lock before committed. On a pool Open
// made they travel in one round trip, with the statement they lead.
func (s *Store) quotaLead(pair quotaPair, ql *quotaLock) *stmtLead {
	return &stmtLead{
		queries: []string{
			s.q(`SELECT ` + quotaCols + ` FROM {p}quotas FORCE INDEX (PRIMARY)
				WHERE subject = 'consumer' AND subject_id = ? OR subject = 'pool' AND subject_id = ? ORDER BY subject FOR UPDATE`),
			// IF evaluates only the branch it takes: a quota without a
			// cap counts nothing.
			s.q(`SELECT UTC_TIMESTAMP(6),
				IF((SELECT max_concurrent_leases FROM {p}quotas WHERE subject = 'consumer' AND subject_id = ?) > 0,
					(SELECT count(*) FROM {p}leases FORCE INDEX ({p}leases_consumer_active)
						WHERE consumer_id = ? AND status = 'active' AND expires_at > UTC_TIMESTAMP(6)), 0),
				IF((SELECT max_concurrent_leases FROM {p}quotas WHERE subject = 'pool' AND subject_id = ?) > 0,
					(SELECT count(*) FROM {p}leases FORCE INDEX ({p}leases_pool)
						WHERE pool_id = ? AND status = 'active' AND expires_at > UTC_TIMESTAMP(6)), 0)`),
		},
		args: [][]any{
			{idArg(pair.consumer), idArg(pair.pool)},
			{idArg(pair.consumer), idArg(pair.consumer), idArg(pair.pool), idArg(pair.pool)},
		},
		read: func(i int, rows *sql.Rows) error {
			for rows.Next() {
				if i == 1 {
					var consumerActive, poolActive int
					if err := rows.Scan(&ql.now, &consumerActive, &poolActive); err != nil {
						return err
					}
					ql.active = map[pharox.QuotaSubject]int{pharox.QuotaConsumer: consumerActive, pharox.QuotaPool: poolActive}
					continue
				}
				q, err := scanQuota(rows)
				if err != nil {
					return err
				}
				ql.quotas = append(ql.quotas, q)
			}
			return nil
		},
	}
}

// finishQuotas completes a quotaLock its lead filled in and remembers whether
// the pair has quotas.
func (s *Store) finishQuotas(pair quotaPair, ql *quotaLock) error {
	if ql.now.IsZero() {
		return errors.New("the count of active leases returned no row")
	}
	ql.now = utc(ql.now)
	s.noteQuotas(pair, len(ql.quotas) > 0)
	return nil
}

// lockQuotas runs quotaLead on its own.
func (s *Store) lockQuotas(ctx context.Context, tx execer, pair quotaPair) (*quotaLock, error) {
	ql := &quotaLock{}
	lead := s.quotaLead(pair, ql)
	if err := queryEach(ctx, tx, lead.queries, lead.args, lead.read); err != nil {
		return nil, err
	}
	if err := s.finishQuotas(pair, ql); err != nil {
		return nil, err
	}
	return ql, nil
}

// admit applies pharox.Quota.Admit to each quota, consumer first, and
// returns the first refusal.
func (ql *quotaLock) admit() error {
	for _, q := range ql.quotas {
		if err := q.Admit(ql.active[q.Subject], ql.now); err != nil {
			return err
		}
	}
	return nil
}

// takeTokens takes a request token from each quota with a
// requests_per_minute (pharox.Quota.TakeToken), written with the commit.
func (s *Store) takeTokens(ctx context.Context, tx execer, ql *quotaLock) error {
	for _, q := range ql.quotas {
		if q.RequestsPerMinute <= 0 {
			continue
		}
		t := q.TakeToken(ql.now)
		if err := tx.later(ctx, s.q(`UPDATE {p}quotas SET tokens = ?, tokens_at = ? WHERE subject = ? AND subject_id = ?`),
			append([]any{t.Tokens, micro(t.TokensAt)}, quotaKey(q)...)...); err != nil {
			return err
		}
	}
	return nil
}

// leaseQuotaProbeSQL is a column of a leases row l telling whether its
// consumer, pool or proxy has a quota.
const leaseQuotaProbeSQL = `EXISTS (SELECT 1 FROM {p}quotas q WHERE q.subject = 'consumer' AND q.subject_id = l.consumer_id
	OR q.subject = 'pool' AND q.subject_id = l.pool_id OR q.subject = 'proxy' AND q.subject_id = l.proxy_id)`

// countUsage adds a released lease's usage, within its release's
// transaction: to the hourly bucket of (the hour of at, consumer, proxy,
// target), and, when hasQuota says the lease's consumer, pool or proxy has
// a quota, to each such quota's byte counters with pharox.Quota.AddBytes
// (the rows locked FOR UPDATE in primary key order, one statement). It
// returns the proxy's new allowance_until (nil: within its allowance, or
// no quota) and whether the proxy has a quota, for the release's update of
// the proxy row.
func (s *Store) countUsage(ctx context.Context, tx execer, l *pharox.Lease, u pharox.Usage, at time.Time, hasQuota bool) (allowance any, proxyQuota bool, err error) {
	if hasQuota {
		qs, err := list(ctx, tx, s.q(`SELECT `+quotaCols+` FROM {p}quotas FORCE INDEX (PRIMARY)
			WHERE subject = 'consumer' AND subject_id = ? OR subject = 'pool' AND subject_id = ? OR subject = 'proxy' AND subject_id = ?
			ORDER BY subject FOR UPDATE`), []any{idArg(l.ConsumerID), idArg(l.PoolID), idArg(l.ProxyID)},
			func(sc scanner) (*pharox.Quota, error) { return scanQuota(sc) })
		if err != nil {
			return nil, false, err
		}
		for _, q := range qs {
			n := q.AddBytes(u.Bytes(), at)
			if err := tx.later(ctx, s.q(`UPDATE {p}quotas SET day = ?, bytes_today = ?, month = ?, bytes_this_month = ?
				WHERE subject = ? AND subject_id = ?`), append([]any{n.Day, n.BytesToday, n.Month, n.BytesThisMonth}, quotaKey(q)...)...); err != nil {
				return nil, false, err
			}
			if q.Subject == pharox.QuotaProxy {
				proxyQuota = true
				allowance = allowanceArg(n.ExhaustedUntil(at))
			}
		}
	}
	err = tx.later(ctx, s.q(`INSERT INTO {p}usage_hourly (hour_start, consumer_id, proxy_id, pool_id, target,
		leases, requests, bytes_sent, bytes_received) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)
		ON DUPLICATE KEY UPDATE leases = leases + 1, requests = requests + ?, bytes_sent = bytes_sent + ?,
		bytes_received = bytes_received + ?`),
		at.Truncate(pharox.UsageBucket), idArg(l.ConsumerID), idArg(l.ProxyID), idArg(l.PoolID), l.Target,
		u.Requests, u.BytesSent, u.BytesReceived, u.Requests, u.BytesSent, u.BytesReceived)
	return allowance, proxyQuota, err
}

// allowanceArg is the allowance_until value of an ExhaustedUntil answer.
func allowanceArg(until time.Time) any {
	if until.IsZero() {
		return nil
	}
	return micro(until)
}

// SetQuota creates or replaces the subject's limits in one transaction:
// the quota row is read FOR UPDATE, then the subject's row. A new quota's
// byte counters are the sums of the subject's hourly buckets of the
// current day and month, its bucket full; an existing one keeps its
// counters and tokens (at most the new requests_per_minute). A proxy's
// allowance_until is recomputed from the new limits.
func (s *Store) SetQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error) {
	if err := q.Validate(); err != nil {
		return nil, fail("mysql: set quota: %w", err)
	}
	var out pharox.Quota
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		for {
			var now time.Time
			prev, err := scanQuota(tx.QueryRowContext(ctx, s.q(`SELECT `+quotaCols+`, UTC_TIMESTAMP(6) FROM {p}quotas
				WHERE subject = ? AND subject_id = ? FOR UPDATE`), quotaKey(&q)...), &now)
			fresh := errors.Is(err, sql.ErrNoRows)
			if err != nil && !fresh {
				return err
			}
			// The subject's row: a pool's with a shared lock, so that a
			// concurrent DeletePool waits or is waited for; a proxy's FOR
			// UPDATE, as its allowance_until is written below.
			var lookup string
			switch q.Subject {
			case pharox.QuotaConsumer:
				lookup = `SELECT UTC_TIMESTAMP(6) FROM {p}consumers WHERE id = ?`
			case pharox.QuotaPool:
				lookup = `SELECT UTC_TIMESTAMP(6) FROM {p}pools WHERE id = ? LOCK IN SHARE MODE`
			default:
				lookup = `SELECT UTC_TIMESTAMP(6) FROM {p}proxies WHERE id = ? FOR UPDATE`
			}
			err = tx.QueryRowContext(ctx, s.q(lookup), idArg(q.SubjectID)).Scan(&now)
			if errors.Is(err, sql.ErrNoRows) {
				switch q.Subject {
				case pharox.QuotaConsumer:
					return fmt.Errorf("consumer %s: %w", q.SubjectID, pharox.ErrConsumerNotFound)
				case pharox.QuotaPool:
					return fmt.Errorf("pool %s: %w", q.SubjectID, pharox.ErrPoolNotFound)
				default:
					return fmt.Errorf("proxy %s: %w", q.SubjectID, pharox.ErrProxyNotFound)
				}
			}
			if err != nil {
				return err
			}
			now = utc(now)
			next := q
			next.Name = ""
			next.UpdatedAt = now
			if fresh {
				next.Day, next.Month = pharox.DayStart(now), pharox.MonthStart(now)
				next.Tokens, next.TokensAt = float64(q.RequestsPerMinute), time.Time{}
				err := tx.QueryRowContext(ctx, s.q(`SELECT COALESCE(SUM(IF(hour_start >= ?, bytes_sent + bytes_received, 0)), 0),
					COALESCE(SUM(bytes_sent + bytes_received), 0)
					FROM {p}usage_hourly WHERE `+string(q.Subject)+`_id = ? AND hour_start >= ?`),
					next.Day, idArg(q.SubjectID), next.Month).Scan(&next.BytesToday, &next.BytesThisMonth)
				if err != nil {
					return err
				}
				_, err = tx.ExecContext(ctx, s.q(`INSERT INTO {p}quotas (subject, subject_id, max_concurrent_leases,
					requests_per_minute, bytes_per_day, bytes_per_month, day, bytes_today, month, bytes_this_month,
					tokens, tokens_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)`),
					string(next.Subject), idArg(next.SubjectID), next.MaxConcurrentLeases, next.RequestsPerMinute,
					next.BytesPerDay, next.BytesPerMonth, next.Day, next.BytesToday, next.Month, next.BytesThisMonth,
					next.Tokens, next.UpdatedAt)
				if code(err) == errDupEntry {
					// A concurrent SetQuota created it (and has committed:
					// the insert waited for it). Update that one.
					continue
				}
				if err != nil {
					return err
				}
			} else {
				next.Day, next.BytesToday, next.Month, next.BytesThisMonth = prev.Day, prev.BytesToday, prev.Month, prev.BytesThisMonth
				next.Tokens, next.TokensAt = min(prev.Tokens, float64(q.RequestsPerMinute)), prev.TokensAt
				if _, err := tx.ExecContext(ctx, s.q(`UPDATE {p}quotas SET max_concurrent_leases = ?, requests_per_minute = ?,
					bytes_per_day = ?, bytes_per_month = ?, tokens = ?, updated_at = ? WHERE subject = ? AND subject_id = ?`),
					append([]any{next.MaxConcurrentLeases, next.RequestsPerMinute, next.BytesPerDay, next.BytesPerMonth,
						next.Tokens, next.UpdatedAt}, quotaKey(&q)...)...); err != nil {
					return err
				}
			}
			if q.Subject == pharox.QuotaProxy {
				if _, err := tx.ExecContext(ctx, s.q(`UPDATE {p}proxies SET allowance_until = ? WHERE id = ?`),
					allowanceArg(next.ExhaustedUntil(now)), idArg(q.SubjectID)); err != nil {
					return err
				}
			}
			out = next.RollPeriods(now)
			return nil
		}
	})
	if err != nil {
		return nil, fail("mysql: set %s quota %s: %w", q.Subject, q.SubjectID, err)
	}
	return &out, nil
}

// GetQuota returns the subject's quota, counters rolled to the server's
// clock.
func (s *Store) GetQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (*pharox.Quota, error) {
	if !subject.Valid() {
		return nil, fail("mysql: get quota: %w: unknown subject %q (want consumer, pool or proxy)", pharox.ErrInvalidArgument, subject)
	}
	var now time.Time
	q, err := scanQuota(s.db.QueryRowContext(ctx, s.q(`SELECT `+quotaCols+`, UTC_TIMESTAMP(6) FROM {p}quotas
		WHERE subject = ? AND subject_id = ?`), string(subject), idArg(id)), &now)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fail("mysql: get %s quota %s: %w", subject, id, pharox.ErrQuotaNotFound)
	}
	if err != nil {
		return nil, fail("mysql: get %s quota %s: %w", subject, id, err)
	}
	r := q.RollPeriods(utc(now))
	return &r, nil
}

// ListQuotas returns every quota ordered by subject, then id (the primary
// key's order), counters rolled to the server's clock.
func (s *Store) ListQuotas(ctx context.Context) ([]*pharox.Quota, error) {
	out, err := list(ctx, s.db, s.q(`SELECT `+quotaCols+`, UTC_TIMESTAMP(6) FROM {p}quotas ORDER BY subject, subject_id`), nil,
		func(sc scanner) (*pharox.Quota, error) {
			var now time.Time
			q, err := scanQuota(sc, &now)
			if err != nil {
				return nil, err
			}
			r := q.RollPeriods(utc(now))
			return &r, nil
		})
	if err != nil {
		return nil, fail("mysql: list quotas: %w", err)
	}
	return out, nil
}

// DeleteQuota removes the subject's quota; a proxy's allowance_until goes
// with it, in the same transaction.
func (s *Store) DeleteQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) error {
	if !subject.Valid() {
		return fail("mysql: delete quota: %w: unknown subject %q (want consumer, pool or proxy)", pharox.ErrInvalidArgument, subject)
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`DELETE FROM {p}quotas WHERE subject = ? AND subject_id = ?`), string(subject), idArg(id))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			if err == nil {
				err = pharox.ErrQuotaNotFound
			}
			return err
		}
		if subject == pharox.QuotaProxy {
			_, err = tx.ExecContext(ctx, s.q(`UPDATE {p}proxies SET allowance_until = NULL WHERE id = ?`), idArg(id))
		}
		return err
	})
	if err != nil {
		return fail("mysql: delete %s quota %s: %w", subject, id, err)
	}
	return nil
}

// usageKeys are the usage_hourly columns each grouping totals by.
var usageKeys = map[pharox.UsageGroup]string{
	pharox.UsageByConsumer: "consumer_id",
	pharox.UsageByProxy:    "proxy_id",
	pharox.UsageByPool:     "pool_id",
	pharox.UsageByTarget:   "target",
}

// QueryUsage totals the hourly buckets q selects, one GROUP BY over the
// primary key's time range or, with a pool or consumer, over that one's
// (id, hour_start) index.
func (s *Store) QueryUsage(ctx context.Context, q pharox.UsageQuery) ([]pharox.UsageRow, error) {
	if err := q.Validate(); err != nil {
		return nil, fail("mysql: query usage: %w", err)
	}
	key := usageKeys[q.GroupBy]
	var (
		where = []string{"1 = 1"}
		args  []any
	)
	if !q.Since.IsZero() {
		where, args = append(where, "hour_start >= ?"), append(args, micro(q.Since.Truncate(pharox.UsageBucket)))
	}
	if !q.Until.IsZero() {
		where, args = append(where, "hour_start < ?"), append(args, ceilMicro(q.Until))
	}
	if q.PoolID != uuid.Nil {
		where, args = append(where, "pool_id = ?"), append(args, idArg(q.PoolID))
	}
	if q.ConsumerID != uuid.Nil {
		where, args = append(where, "consumer_id = ?"), append(args, idArg(q.ConsumerID))
	}
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+key+`, SUM(leases), SUM(requests), SUM(bytes_sent), SUM(bytes_received)
		FROM {p}usage_hourly WHERE `+strings.Join(where, " AND ")+` GROUP BY `+key+` ORDER BY `+key), args...)
	if err != nil {
		return nil, fail("mysql: query usage: %w", err)
	}
	defer rows.Close()
	out := []pharox.UsageRow{}
	for rows.Next() {
		var r pharox.UsageRow
		if err := rows.Scan(&r.Key, &r.Leases, &r.Requests, &r.BytesSent, &r.BytesReceived); err != nil {
			return nil, fail("mysql: query usage: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fail("mysql: query usage: %w", err)
	}
	return out, nil
}

// PurgeUsage deletes the buckets that started before the given time,
// purgeBatch at a time through the primary key, and returns how many.
func (s *Store) PurgeUsage(ctx context.Context, before time.Time) (int, error) {
	b := ceilMicro(before)
	total := 0
	for {
		res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM {p}usage_hourly WHERE hour_start < ? LIMIT `+fmt.Sprint(purgeBatch)), b)
		if err != nil {
			return total, fail("mysql: purge usage: %w", err)
		}
		n, _ := res.RowsAffected()
		total += int(n)
		if n < purgeBatch {
			return total, nil
		}
	}
}
