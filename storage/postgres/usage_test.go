package postgres

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
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

// TestBatchQuotasMatchSequential: a quota batch (a statement that admits
// several consumers' requests at once) serves exactly the requests that
// the reference store, acquiring one after another, does not refuse,
// with the same proxies, for consumers with a cap, with a request rate,
// without a quota, and under a pool cap; the refused ones come back
// unserved (the single statement then returns their QuotaError), and the
// tokens left match.
func TestBatchQuotasMatchSequential(t *testing.T) {
	ctx := context.Background()
	tw := newTwin(t, rand.New(rand.NewPCG(8, 9)), 12)
	// Three more consumers in each store, in the same order.
	type pair struct{ pg, mem *pharox.Consumer }
	cons := []pair{{tw.pgCons, tw.memCons}}
	for _, name := range []string{"capped", "rated", "free"} {
		pc, err := tw.pg.EnsureConsumer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		mc, err := tw.mem.EnsureConsumer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cons = append(cons, pair{pc, mc})
	}
	limits := []pharox.QuotaLimits{{MaxConcurrentLeases: 3}, {MaxConcurrentLeases: 2}, {RequestsPerMinute: 3}, {}}
	for _, st := range []pharox.Storage{tw.pg, tw.mem} {
		pool, err := st.GetPoolByName(ctx, "twin")
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range limits {
			if l.IsZero() {
				continue
			}
			c := cons[i].mem
			if st == pharox.Storage(tw.pg) {
				c = cons[i].pg
			}
			if _, err := st.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID, QuotaLimits: l}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 8}}); err != nil {
			t.Fatal(err)
		}
	}
	// One lease already held by the first consumer.
	for _, st := range []pharox.Storage{tw.pg, tw.mem} {
		req := tw.request(pharox.FirstAvailable, st == pharox.Storage(tw.pg), nil)
		if _, err := st.AcquireLease(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	order := []int{1, 2, 0, 2, 1, 3, 2, 1, 0, 2, 3, 1, 0, 3}
	items := make([]*acquireItem, len(order))
	for i, k := range order {
		req := pharox.AcquireRequest{PoolName: "twin", ConsumerID: cons[k].pg.ID, ConsumerName: cons[k].pg.Name, Duration: time.Hour, Strategy: pharox.FirstAvailable}
		items[i] = &acquireItem{req: &req, leaseID: uuid.New(), where: "true"}
	}
	res := tw.pg.execAcquireBatch(ctx, acquireBatchKey{pool: "twin", strategy: pharox.FirstAvailable, quota: true}, items)
	served, refused := 0, 0
	for i, k := range order {
		want, werr := tw.mem.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "twin", ConsumerID: cons[k].mem.ID, ConsumerName: cons[k].mem.Name,
			Duration: time.Hour, Strategy: pharox.FirstAvailable})
		got := res[i]
		switch {
		case errors.Is(werr, pharox.ErrQuotaExceeded):
			refused++
			if !errors.Is(got.Err, errNotServed) {
				t.Fatalf("request %d (consumer %d): got %v, %v; the reference refused it: %v", i, k, got.Val, got.Err, werr)
			}
		case werr != nil:
			t.Fatal(werr)
		case got.Err != nil:
			t.Fatalf("request %d (consumer %d): %v; the reference leased %s", i, k, got.Err, want.ProxyID)
		default:
			served++
			if got.Val.ProxyID != want.ProxyID {
				t.Fatalf("request %d: leased %s, reference %s", i, got.Val.ProxyID, want.ProxyID)
			}
		}
	}
	if served == 0 || refused == 0 {
		t.Fatalf("%d served, %d refused: the test proves nothing", served, refused)
	}
	pq, err := tw.pg.GetQuota(ctx, pharox.QuotaConsumer, cons[2].pg.ID)
	if err != nil {
		t.Fatal(err)
	}
	mq, err := tw.mem.GetQuota(ctx, pharox.QuotaConsumer, cons[2].mem.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The stores' clocks differ by the time the test took: a refill of a
	// few thousandths of a token at 3 a minute.
	if d := pq.Tokens - mq.Tokens; d < -0.05 || d > 0.05 {
		t.Fatalf("tokens left: %v, reference %v", pq.Tokens, mq.Tokens)
	}
}

// TestQuotaHintsFollowOtherStores: the quota hints only save a round
// trip. A Store that has acquired for a consumer without a quota enforces
// one another Store (process) sets at once, alone and batched, and goes
// back to the plain statements once it is deleted.
func TestQuotaHintsFollowOtherStores(t *testing.T) {
	ctx := context.Background()
	s1 := newTestStore(t)
	s2, err := New(ctx, s1.pool, WithSchema(s1.cfg.schema))
	if err != nil {
		t.Fatal(err)
	}
	_, c := seedPool(t, s1, "hints", 20, 1)
	req := pharox.AcquireRequest{PoolName: "hints", ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Minute, Strategy: pharox.FirstAvailable}
	first, err := s1.AcquireLease(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if s1.hints.has(&req) {
		t.Fatal("hint set for a consumer without a quota")
	}
	if _, err := s2.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 4}}); err != nil {
		t.Fatal(err)
	}
	// Concurrently, so that the plain batch statement meets the quota.
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			_, err := s1.AcquireLease(ctx, req)
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, pharox.ErrQuotaExceeded):
				refused.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 3 || refused.Load() != 7 {
		t.Fatalf("with a cap of 4 and one lease held: %d acquired, %d refused; want 3 and 7", ok.Load(), refused.Load())
	}
	if !s1.hints.has(&req) {
		t.Fatal("no hint after the quota was met")
	}
	if err := s2.DeleteQuota(ctx, pharox.QuotaConsumer, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.AcquireLease(ctx, req); err != nil {
		t.Fatalf("acquisition after the quota was deleted: %v", err)
	}
	if s1.hints.has(&req) {
		t.Fatal("the hint outlived the quota")
	}
	_ = first
}

// TestBatchedReleasesCountUsage: releases with usage reports batched
// together count each lease once, in its bucket and its quotas, as the
// same releases one after another would; a lease released twice in one
// batch counts once; releases without a report count nothing.
func TestBatchedReleasesCountUsage(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	pool, c := seedPool(t, s, "batched-usage", 40, 1)
	for _, q := range []pharox.Quota{
		{Subject: pharox.QuotaConsumer, SubjectID: c.ID, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1 << 40}},
		{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: pharox.QuotaLimits{BytesPerMonth: 1 << 40}},
	} {
		if _, err := s.SetQuota(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	var leases []*pharox.Lease
	for i := range 30 {
		req := pharox.AcquireRequest{PoolName: pool.Name, ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Minute,
			Strategy: pharox.FirstAvailable, Target: []string{"", "a.example", "b.example"}[i%3]}
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	// A proxy quota that the batch uses up.
	if _, err := s.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: leases[5].ProxyID, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 100}}); err != nil {
		t.Fatal(err)
	}
	var items []releaseItem
	var want pharox.Usage
	for i, l := range leases[:20] {
		u := pharox.Usage{Requests: int64(i + 1), BytesSent: int64(10 * i), BytesReceived: int64(100 * i)}
		items = append(items, releaseItem{id: l.ID, usage: u})
		want = want.Add(u)
	}
	items = append(items, releaseItem{id: leases[3].ID, usage: pharox.Usage{Requests: 1000}}) // twice: counts once
	res := s.execReleaseBatch(ctx, true, items)
	for i, r := range res {
		if (r.Err == nil) != (i < 20) {
			t.Fatalf("release %d: %v, %v", i, r.Val, r.Err)
		}
		if i < 20 && (r.Val.Usage == nil || *r.Val.Usage != items[i].usage || r.Val.Target != leases[i].Target) {
			t.Fatalf("release %d returned usage %v target %q; want %v %q", i, r.Val.Usage, r.Val.Target, items[i].usage, leases[i].Target)
		}
	}
	plain := make([]releaseItem, 0, 10)
	for _, l := range leases[20:] {
		plain = append(plain, releaseItem{id: l.ID})
	}
	for _, r := range s.execReleaseBatch(ctx, false, plain) {
		if r.Err != nil || r.Val.Usage != nil {
			t.Fatalf("release without usage: %v, %v", r.Val, r.Err)
		}
	}
	rows, err := s.QueryUsage(ctx, pharox.UsageQuery{GroupBy: pharox.UsageByTarget})
	if err != nil {
		t.Fatal(err)
	}
	var got pharox.Usage
	var n int64
	for _, r := range rows {
		got = got.Add(r.Usage)
		n += r.Leases
	}
	if got != want || n != 20 || len(rows) != 3 {
		t.Fatalf("usage by target %+v: total %+v over %d leases; want %+v over 20 leases in 3 rows", rows, got, n, want)
	}
	for _, subject := range []pharox.QuotaSubject{pharox.QuotaConsumer, pharox.QuotaPool} {
		id := c.ID
		if subject == pharox.QuotaPool {
			id = pool.ID
		}
		q, err := s.GetQuota(ctx, subject, id)
		if err != nil {
			t.Fatal(err)
		}
		if q.BytesToday != want.Bytes() || q.BytesThisMonth != want.Bytes() {
			t.Fatalf("%s quota counts %d today, %d this month; want %d", subject, q.BytesToday, q.BytesThisMonth, want.Bytes())
		}
	}
	p, err := s.GetProxy(ctx, leases[5].ProxyID)
	if err != nil {
		t.Fatal(err)
	}
	var until *time.Time
	if err := s.pool.QueryRow(ctx, s.q(`SELECT allowance_until FROM {s}.proxies WHERE id = $1`), p.ID).Scan(&until); err != nil {
		t.Fatal(err)
	}
	if p.CurrentLeases != 0 || until == nil || !until.Equal(pharox.DayStart(time.Now()).AddDate(0, 0, 1)) {
		t.Fatalf("proxy over its allowance: %d leases, allowance until %v", p.CurrentLeases, until)
	}
}
