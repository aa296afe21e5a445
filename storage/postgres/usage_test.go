package postgres

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pharox/pharox"
)

// TestQuotaSQLMatchesReference checks the SQL forms of the quota rules
// (usage.go) against pharox.Quota's Go rules, which they must follow
// exactly, on random quotas, times and counts, boundaries included:
// RollPeriods (today, this_month), RefillTokens (to the bit), Admit (the
// limit refused, or none), TakeToken, AddBytes and ExhaustedUntil, the
// last two through the UPDATE a release runs.
func TestQuotaSQLMatchesReference(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(21, 5))
	evalSQL := s.q(`WITH qn AS (SELECT $1::timestamptz AS t),
q AS (SELECT $2::integer AS max_concurrent_leases, $3::integer AS requests_per_minute, $4::bigint AS bytes_per_day, $5::bigint AS bytes_per_month,
	$6::timestamptz AS day, $7::bigint AS bytes_today, $8::timestamptz AS month, $9::bigint AS bytes_this_month,
	$10::float8 AS tokens, $11::timestamptz AS tokens_at),
r AS (SELECT q.*, ` + todaySQL("q", "qn.t") + ` AS today, ` + thisMonthSQL("q", "qn.t") + ` AS this_month, ` + refillSQL("q", "qn.t") + ` AS refill,
	$12::bigint AS active FROM q, qn)
SELECT r.today, r.this_month, r.refill, coalesce(` + limitSQL("r") + `, ''), r.refill - 1 FROM r`)
	addSQL := s.q(`UPDATE {s}.quotas q SET ` + addBytesSQL("q", "a.n", "a.t") + `
FROM (SELECT $3::bigint AS n, $4::timestamptz AS t) a
WHERE q.subject = 'proxy' AND q.subject_id = $1 AND $2::boolean
RETURNING q.day, q.bytes_today, q.month, q.bytes_this_month, ` + exhaustedUntilSQL("q"))

	base := time.Date(2026, 12, 3, 17, 0, 0, 0, time.UTC)
	for i := range 3000 {
		now := base.Add(time.Duration(rng.Int64N(int64(800*24*time.Hour))) - 400*24*time.Hour).Truncate(time.Microsecond)
		if i%5 == 0 {
			// Period boundaries.
			now = []time.Time{pharox.DayStart(now), pharox.MonthStart(now), pharox.DayStart(now).Add(-time.Microsecond)}[i%3]
		}
		q := pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: uuid.New()}
		pick := func(vals ...int64) int64 { return vals[rng.IntN(len(vals))] }
		q.MaxConcurrentLeases = int(pick(0, 1, 2, 5, 100))
		q.RequestsPerMinute = int(pick(0, 1, 2, 3, 7, 60, 1000, 12345))
		q.BytesPerDay = pick(0, 1, 1000, 1<<30)
		q.BytesPerMonth = pick(0, 1, 5000, 1<<40)
		q.Day = []time.Time{pharox.DayStart(now), pharox.DayStart(now).AddDate(0, 0, -1), pharox.DayStart(now).AddDate(0, 0, 1)}[rng.IntN(3)]
		q.Month = []time.Time{pharox.MonthStart(now), pharox.MonthStart(now).AddDate(0, -1, 0), pharox.MonthStart(now).AddDate(0, 1, 0)}[rng.IntN(3)]
		q.BytesToday = pick(0, 1, 999, 1000, 1001, 1<<30)
		q.BytesThisMonth = pick(0, 4999, 5000, 1<<40+1)
		if q.RequestsPerMinute > 0 && rng.IntN(5) > 0 {
			rpm := float64(q.RequestsPerMinute)
			q.Tokens = []float64{0, 0.5, rpm - 1, rpm, rng.Float64() * rpm, 1 - 1/rpm}[rng.IntN(6)]
			// Elapsed times that refill to exactly one token, just
			// under, over a minute, a long time, and a future TokensAt.
			exact := time.Duration(float64(time.Minute) * (1 - q.Tokens) / rpm).Truncate(time.Microsecond)
			back := []time.Duration{exact, exact - time.Microsecond, exact + time.Microsecond, 61*time.Second + 123456*time.Microsecond,
				time.Duration(rng.Int64N(int64(2 * time.Hour))).Truncate(time.Microsecond), -time.Second, 0}[rng.IntN(7)]
			q.TokensAt = now.Add(-back)
		}
		active := int(pick(0, 1, 2, 4, 5, 99, 100))

		var today, month int64
		var refill, taken float64
		var limit string
		var tokensAt *time.Time
		if !q.TokensAt.IsZero() {
			tokensAt = &q.TokensAt
		}
		err := s.pool.QueryRow(ctx, evalSQL, now, int32(q.MaxConcurrentLeases), int32(q.RequestsPerMinute), q.BytesPerDay, q.BytesPerMonth,
			q.Day, q.BytesToday, q.Month, q.BytesThisMonth, q.Tokens, tokensAt, int64(active)).Scan(&today, &month, &refill, &limit, &taken)
		if err != nil {
			t.Fatal(err)
		}
		r := q.RollPeriods(now)
		if today != r.BytesToday || month != r.BytesThisMonth {
			t.Fatalf("case %d %+v at %s: SQL rolled counters %d, %d; RollPeriods %d, %d", i, q, now, today, month, r.BytesToday, r.BytesThisMonth)
		}
		if want := q.RefillTokens(now); refill != want {
			t.Fatalf("case %d %+v at %s: SQL refill %v, RefillTokens %v", i, q, now, refill, want)
		}
		wantLimit := ""
		if qe, ok := errors.AsType[*pharox.QuotaError](q.Admit(active, now)); ok {
			wantLimit = qe.Limit
		}
		if limit != wantLimit {
			t.Fatalf("case %d %+v at %s, %d active: SQL refuses %q, Admit %q", i, q, now, active, limit, wantLimit)
		}
		if q.RequestsPerMinute > 0 && wantLimit == "" {
			if want := q.TakeToken(now); taken != want.Tokens {
				t.Fatalf("case %d %+v at %s: SQL tokens after a take %v, TakeToken %v", i, q, now, taken, want.Tokens)
			}
		}

		// AddBytes and ExhaustedUntil, through the release's UPDATE.
		n := pick(0, 1, 500, 1<<30)
		var got pharox.Quota
		var until *time.Time
		err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, s.q(`INSERT INTO {s}.quotas (`+quotaColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`),
				"proxy", q.SubjectID, int32(0), int32(0), q.BytesPerDay, q.BytesPerMonth, q.Day, q.BytesToday, q.Month, q.BytesThisMonth, 0.0, nil, now); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, addSQL, q.SubjectID, true, n, now).Scan(&got.Day, &got.BytesToday, &got.Month, &got.BytesThisMonth, &until); err != nil {
				return err
			}
			return errRollback
		})
		if err != nil && !errors.Is(err, errRollback) {
			t.Fatal(err)
		}
		want := q.AddBytes(n, now)
		if !got.Day.Equal(want.Day) || got.BytesToday != want.BytesToday || !got.Month.Equal(want.Month) || got.BytesThisMonth != want.BytesThisMonth {
			t.Fatalf("case %d %+v at %s, %d bytes: SQL counters %s %d %s %d; AddBytes %s %d %s %d", i, q, now, n,
				got.Day, got.BytesToday, got.Month, got.BytesThisMonth, want.Day, want.BytesToday, want.Month, want.BytesThisMonth)
		}
		wantUntil := want.ExhaustedUntil(now)
		if (until == nil) != wantUntil.IsZero() || (until != nil && !until.Equal(wantUntil)) {
			t.Fatalf("case %d %+v at %s, %d bytes: SQL allowance until %v; ExhaustedUntil %v", i, q, now, n, until, wantUntil)
		}
	}
}
