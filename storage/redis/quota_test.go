package redis

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
	goredis "github.com/redis/go-redis/v9"
)

// quotaPool creates a pool of n proxies of max concurrency 1 and a
// consumer, and returns the pool and an acquisition request for them.
func quotaPool(t *testing.T, s *Store, n int) (*pharox.Pool, []*pharox.Proxy, pharox.AcquireRequest) {
	t.Helper()
	ctx := t.Context()
	pool, ps := testfactory.PoolWithProxies(ctx, t, s, nil, n, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(1)})
	c := testfactory.Consumer(ctx, t, s, nil)
	return pool, ps, pharox.AcquireRequest{PoolName: pool.Name, ConsumerID: c.ID, ConsumerName: c.Name,
		Duration: time.Minute, Strategy: pharox.FirstAvailable}
}

// setQuota sets q or fails the test.
func setQuota(t *testing.T, s *Store, q pharox.Quota) *pharox.Quota {
	t.Helper()
	out, err := s.SetQuota(t.Context(), q)
	if err != nil {
		t.Fatalf("SetQuota(%s %s): %v", q.Subject, q.SubjectID, err)
	}
	return out
}

// limitOf returns the limit of err's *QuotaError, "" for nil, or the
// error's text.
func limitOf(err error) string {
	if err == nil {
		return ""
	}
	if qe, ok := errors.AsType[*pharox.QuotaError](err); ok && errors.Is(err, pharox.ErrQuotaExceeded) {
		return string(qe.Subject) + " " + qe.Limit
	}
	return err.Error()
}

// actKeys returns the consumers' sets of active leases left in the store.
func actKeys(t *testing.T, s *Store) []string {
	t.Helper()
	return slices.DeleteFunc(keysUnder(t, s), func(k string) bool { return !strings.HasSuffix(k, ":act") })
}

// TestBatchedAcquisitionsApplyQuotas checks acquire_many.lua's quotas: in
// one batch of interleaved consumers, one capped at 3 leases gets 3, one
// with 2 requests a minute gets 2, the others are refused by those limits,
// and one without a quota gets every lease it asks for; a pool cap then
// refuses the rest of a second batch. The tokens left are what single
// acquisitions leave, and releasing every lease in a batch empties the
// capped consumer's set of active leases.
func TestBatchedAcquisitionsApplyQuotas(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	pool, _, req := quotaPool(t, s, 20)
	capped, rated := testfactory.Consumer(ctx, t, s, nil), testfactory.Consumer(ctx, t, s, nil)
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: capped.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 3}})
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: rated.ID, QuotaLimits: pharox.QuotaLimits{RequestsPerMinute: 2}})
	free := &pharox.Consumer{ID: req.ConsumerID, Name: req.ConsumerName}
	batch := func(n int) ([]pharox.AcquireRequest, []string) {
		var reqs []pharox.AcquireRequest
		var who []string
		for range n {
			// The capped consumer comes last: the batch counts its leases
			// after deferring writes of the others.
			for _, c := range []*pharox.Consumer{free, rated, capped} {
				r := req
				r.ConsumerID, r.ConsumerName = c.ID, c.Name
				reqs = append(reqs, r)
				who = append(who, c.Name)
			}
		}
		return reqs, who
	}
	key := acquireKey{pool: req.PoolName, strategy: string(req.Strategy)}
	reqs, who := batch(4)
	outcomes := map[string][]string{}
	var leases []uuid.UUID
	// Counting a consumer's leases flushes the batch's deferred writes
	// mid-batch: the proxies (of one slot each) must still be distinct.
	proxies := map[uuid.UUID]bool{}
	for i, r := range s.execAcquire(ctx, key, reqs) {
		outcomes[who[i]] = append(outcomes[who[i]], limitOf(r.Err))
		if r.Err == nil {
			leases = append(leases, r.Val.ID)
			if proxies[r.Val.ProxyID] {
				t.Errorf("item %d leased proxy %s a second time", i, r.Val.ProxyID)
			}
			proxies[r.Val.ProxyID] = true
		}
	}
	want := map[string][]string{
		capped.Name: {"", "", "", "consumer max_concurrent_leases"},
		rated.Name:  {"", "", "consumer requests_per_minute", "consumer requests_per_minute"},
		free.Name:   {"", "", "", ""},
	}
	for name, w := range want {
		if !slices.Equal(outcomes[name], w) {
			t.Errorf("consumer %s: outcomes %q, want %q", name, outcomes[name], w)
		}
	}
	q, err := s.GetQuota(ctx, pharox.QuotaConsumer, rated.ID)
	if err != nil {
		t.Fatal(err)
	}
	if q.Tokens != 0 || q.TokensAt.IsZero() {
		t.Errorf("rated consumer's bucket after two batched acquisitions: %v tokens at %v, want 0 at the batch's time", q.Tokens, q.TokensAt)
	}
	// A pool cap of 11 (9 leases held) admits two more of the next batch.
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 11}})
	reqs = reqs[:0]
	for range 4 {
		reqs = append(reqs, req)
	}
	var got []string
	for _, r := range s.execAcquire(ctx, key, reqs) {
		got = append(got, limitOf(r.Err))
		if r.Err == nil {
			leases = append(leases, r.Val.ID)
		}
	}
	if w := []string{"", "", "pool max_concurrent_leases", "pool max_concurrent_leases"}; !slices.Equal(got, w) {
		t.Errorf("batch under a pool cap of 11 with 9 held: %q, want %q", got, w)
	}
	if keys := actKeys(t, s); len(keys) != 1 {
		t.Errorf("sets of active leases: %q, want the capped consumer's", keys)
	}
	for i, r := range s.execRelease(ctx, struct{}{}, plainReleases(leases)) {
		if r.Err != nil {
			t.Errorf("release %d: %v", i, r.Err)
		}
	}
	if keys := actKeys(t, s); len(keys) != 0 {
		t.Errorf("sets of active leases after releasing every lease: %q, want none", keys)
	}
}

// TestBatchedReleasesCountUsage checks release_many.lua's accounting: of a
// batch releasing two leases of one group with usage, one lease with
// usage twice, one without usage and an expired one with usage, each
// lease counts once in the bucket and the consumer quota's counters, the
// expired one and the one without a report not at all, and every lease
// keeps its own report.
func TestBatchedReleasesCountUsage(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	_, _, req := quotaPool(t, s, 10)
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: req.ConsumerID, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1 << 40}})
	acquire := func(d time.Duration, target string) *pharox.Lease {
		r := req
		r.Duration, r.Target = d, target
		l, err := s.AcquireLease(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	short := acquire(20*time.Millisecond, "")
	a, b, twice, none := acquire(time.Minute, "shop.example"), acquire(time.Minute, "shop.example"), acquire(time.Minute, ""), acquire(time.Minute, "")
	time.Sleep(50 * time.Millisecond)
	use := func(n int64) string {
		return encodeUsage(&pharox.Usage{Requests: n, BytesSent: 10 * n, BytesReceived: 100 * n})
	}
	reqs := []releaseReq{{a.ID, use(1)}, {twice.ID, use(2)}, {b.ID, use(3)}, {none.ID, ""}, {twice.ID, use(4)}, {short.ID, use(5)}}
	wantErr := []error{nil, nil, nil, nil, pharox.ErrLeaseNotActive, pharox.ErrLeaseNotActive}
	wantUse := []*pharox.Usage{{Requests: 1, BytesSent: 10, BytesReceived: 100}, {Requests: 2, BytesSent: 20, BytesReceived: 200},
		{Requests: 3, BytesSent: 30, BytesReceived: 300}, nil}
	for i, r := range s.execRelease(ctx, struct{}{}, reqs) {
		if !errors.Is(r.Err, wantErr[i]) {
			t.Errorf("release %d: err = %v, want %v", i, r.Err, wantErr[i])
			continue
		}
		if r.Err == nil && fmt.Sprint(r.Val.Usage) != fmt.Sprint(wantUse[i]) {
			t.Errorf("release %d: usage %v, want %v", i, r.Val.Usage, wantUse[i])
		}
	}
	if l, err := s.GetLease(ctx, b.ID); err != nil || l.Usage == nil || *l.Usage != *wantUse[2] || l.Target != "shop.example" {
		t.Errorf("GetLease after a batched release: %+v, %v; want usage %v and its target", l, err, wantUse[2])
	}
	rows, err := s.QueryUsage(ctx, pharox.UsageQuery{GroupBy: pharox.UsageByTarget})
	if err != nil {
		t.Fatal(err)
	}
	want := []pharox.UsageRow{
		{Key: "", Leases: 1, Usage: pharox.Usage{Requests: 2, BytesSent: 20, BytesReceived: 200}},
		{Key: "shop.example", Leases: 2, Usage: pharox.Usage{Requests: 4, BytesSent: 40, BytesReceived: 400}},
	}
	if !slices.Equal(rows, want) {
		t.Errorf("usage by target: %+v, want %+v", rows, want)
	}
	q, err := s.GetQuota(ctx, pharox.QuotaConsumer, req.ConsumerID)
	if err != nil {
		t.Fatal(err)
	}
	if q.BytesToday != 660 || q.BytesThisMonth != 660 {
		t.Errorf("consumer quota after the batch: %d bytes today, %d this month; want 660", q.BytesToday, q.BytesThisMonth)
	}
}

// TestSetQuotaCountsEarlierLeases checks that a consumer's new
// max_concurrent_leases counts the leases it took before the quota, in
// every pool: with 3 held in two pools and a cap of 3 the next is
// refused, and once one is released it is admitted.
func TestSetQuotaCountsEarlierLeases(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	_, _, req := quotaPool(t, s, 5)
	other, _ := testfactory.PoolWithProxies(ctx, t, s, nil, 5, nil)
	var held []*pharox.Lease
	for _, name := range []string{req.PoolName, req.PoolName, other.Name} {
		r := req
		r.PoolName = name
		l, err := s.AcquireLease(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	// Another consumer's lease does not count.
	r := req
	r.ConsumerID = testfactory.Consumer(ctx, t, s, nil).ID
	if _, err := s.AcquireLease(ctx, r); err != nil {
		t.Fatal(err)
	}
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: req.ConsumerID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 3}})
	if _, err := s.AcquireLease(ctx, req); limitOf(err) != "consumer max_concurrent_leases" {
		t.Fatalf("acquisition with 3 leases held from before a cap of 3: err = %v, want the cap's refusal", err)
	}
	// Setting it again changes nothing.
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: req.ConsumerID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 3}})
	if _, err := s.ReleaseLease(ctx, held[2].ID, nil); err != nil {
		t.Fatal(err)
	}
	l, err := s.AcquireLease(ctx, req)
	if err != nil {
		t.Fatalf("acquisition after one of 3 was released: %v", err)
	}
	if _, err := s.AcquireLease(ctx, req); limitOf(err) != "consumer max_concurrent_leases" {
		t.Fatalf("acquisition with 3 held again: err = %v, want the cap's refusal", err)
	}
	for _, l := range append(held[:2], l) {
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			t.Fatal(err)
		}
	}
	if keys := actKeys(t, s); len(keys) != 0 {
		t.Errorf("sets of active leases after every counted lease ended: %q, want none", keys)
	}
}

// TestSetQuotaSumsEarlierHours checks a new quota's counters where the
// client sums them: buckets of earlier hours of this day and month
// (written straight into Redis) count, last month's and other subjects'
// do not, and the current hour's count too.
func TestSetQuotaSumsEarlierHours(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	pool, ps, req := quotaPool(t, s, 2)
	now, err := s.serverNow(ctx)
	if err != nil {
		t.Fatal(err)
	}
	day, month := pharox.DayStart(now), pharox.MonthStart(now)
	other := uuid.NewString()
	var wantDay, wantMonth int64
	puts := 0
	put := func(hour time.Time, consumer string, bytes int64) {
		t.Helper()
		h := hour.Truncate(time.Hour).Unix()
		// A target per bucket, so that two puts into one hour add up.
		puts++
		field := fmt.Sprintf("%s|%s|%s|t%d.example", consumer, ps[0].ID, pool.ID, puts)
		key := fmt.Sprintf("%susage:%d", s.prefix, h)
		if err := s.rdb.HSet(ctx, key, field, fmt.Sprintf("1 1 %d %d", bytes, 2*bytes)).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.rdb.ZAdd(ctx, s.prefix+"usage:hours", goredis.Z{Score: float64(h), Member: h}).Err(); err != nil {
			t.Fatal(err)
		}
		if consumer == req.ConsumerID.String() && !hour.Before(month) {
			wantMonth += 3 * bytes
			if !hour.Before(day) {
				wantDay += 3 * bytes
			}
		}
	}
	put(month.Add(-time.Hour), req.ConsumerID.String(), 1000) // last month
	put(month, req.ConsumerID.String(), 1)
	put(day.Add(-time.Hour), req.ConsumerID.String(), 10) // yesterday (or last month)
	put(day, req.ConsumerID.String(), 100)
	put(now.Add(-time.Hour), req.ConsumerID.String(), 10000) // the hour before (or yesterday's)
	put(now, req.ConsumerID.String(), 100000)
	put(now, other, 1000000)
	q := setQuota(t, s, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: req.ConsumerID, QuotaLimits: pharox.QuotaLimits{BytesPerMonth: 1 << 40}})
	if q.BytesToday != wantDay || q.BytesThisMonth != wantMonth {
		t.Errorf("new quota at %s: %d bytes today, %d this month; want %d and %d", now, q.BytesToday, q.BytesThisMonth, wantDay, wantMonth)
	}
}

// TestUsageBucketsExpire checks that an hour's bucket expires
// WithUsageRetention after its hour began, and lives on without one.
func TestUsageBucketsExpire(t *testing.T) {
	for _, retention := range []time.Duration{DefaultUsageRetention, 48 * time.Hour, 0} {
		t.Run(fmt.Sprint(retention), func(t *testing.T) {
			var s *Store
			if retention == DefaultUsageRetention {
				s = newTestStore(t)
			} else {
				s = newTestStore(t, WithUsageRetention(retention))
			}
			ctx := t.Context()
			_, _, req := quotaPool(t, s, 1)
			l, err := s.AcquireLease(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			ended, err := s.ReleaseLease(ctx, l.ID, &pharox.Usage{Requests: 1, BytesSent: 2, BytesReceived: 3})
			if err != nil {
				t.Fatal(err)
			}
			hour := ended.ReleasedAt.Truncate(time.Hour)
			key := fmt.Sprintf("%susage:%d", s.prefix, hour.Unix())
			at, err := s.rdb.ExpireTime(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			want := time.Duration(hour.Add(retention).Unix()) * time.Second
			if retention == 0 {
				want = -1 // no expiry
			}
			if at != want {
				t.Errorf("bucket %s expires at %v, want %v", key, at, want)
			}
		})
	}
}

// TestRetriedReleaseCountsUsageOnce checks that a release with usage
// go-redis sent twice (release.lua alone, release_many.lua in a batch)
// counts it once, in the buckets and in the quota.
func TestRetriedReleaseCountsUsageOnce(t *testing.T) {
	for _, n := range []int{1, 2} {
		name := "single"
		if n > 1 {
			name = "batched"
		}
		t.Run(name, func(t *testing.T) {
			var req pharox.AcquireRequest
			var reqs []releaseReq
			use := pharox.Usage{Requests: 1, BytesSent: 100, BytesReceived: 1000}
			retried(t, func(t *testing.T) *retryingStore {
				rs := newRetryingStore(t)
				_, req = retryPool(t, rs.Store)
				setQuota(t, rs.Store, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: req.ConsumerID,
					QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1 << 40}})
				reqs = reqs[:0]
				for range n {
					l, err := rs.AcquireLease(t.Context(), req)
					if err != nil {
						t.Fatal(err)
					}
					reqs = append(reqs, releaseReq{l.ID, encodeUsage(&use)})
				}
				return rs
			}, func(rs *retryingStore) {
				for i, r := range rs.execRelease(t.Context(), struct{}{}, reqs) {
					if r.Err != nil {
						t.Errorf("release %d of a retried batch of %d: %v", i, n, r.Err)
					} else if r.Val.Usage == nil || *r.Val.Usage != use {
						t.Errorf("release %d: usage %v, want %v", i, r.Val.Usage, use)
					}
				}
			}, func(rs *retryingStore) {
				rows, err := rs.QueryUsage(t.Context(), pharox.UsageQuery{GroupBy: pharox.UsageByConsumer})
				if err != nil {
					t.Fatal(err)
				}
				if len(rows) != 1 || rows[0].Leases != int64(n) || rows[0].Bytes() != int64(n)*use.Bytes() {
					t.Errorf("usage after %d releases sent twice: %+v, want %d leases of %d bytes", n, rows, n, use.Bytes())
				}
				q, err := rs.GetQuota(t.Context(), pharox.QuotaConsumer, req.ConsumerID)
				if err != nil {
					t.Fatal(err)
				}
				if q.BytesToday != int64(n)*use.Bytes() {
					t.Errorf("quota after %d releases sent twice: %d bytes today, want %d", n, q.BytesToday, int64(n)*use.Bytes())
				}
			})
		})
	}
}

// TestRetriedAcquireTakesOneToken checks that an acquisition go-redis sent
// twice takes one token from its consumer's bucket.
func TestRetriedAcquireTakesOneToken(t *testing.T) {
	var req pharox.AcquireRequest
	retried(t, func(t *testing.T) *retryingStore {
		rs := newRetryingStore(t)
		_, req = retryPool(t, rs.Store)
		setQuota(t, rs.Store, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: req.ConsumerID,
			QuotaLimits: pharox.QuotaLimits{RequestsPerMinute: 2, MaxConcurrentLeases: 2}})
		return rs
	}, func(rs *retryingStore) {
		if _, err := rs.AcquireLease(t.Context(), req); err != nil {
			t.Fatalf("acquisition sent twice: %v", err)
		}
	}, func(rs *retryingStore) {
		if _, err := rs.AcquireLease(t.Context(), req); err != nil {
			t.Errorf("second acquisition of a consumer with 2 requests a minute and 2 leases: %v", err)
		}
	})
}

// TestRetriedQuotaWritesSucceed checks that DeleteQuota and PurgeUsage
// sent twice by go-redis answer as their first run did.
func TestRetriedQuotaWritesSucceed(t *testing.T) {
	var req pharox.AcquireRequest
	var purged int
	retried(t, func(t *testing.T) *retryingStore {
		rs := newRetryingStore(t)
		_, req = retryPool(t, rs.Store)
		setQuota(t, rs.Store, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: req.ConsumerID, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1}})
		l, err := rs.AcquireLease(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rs.ReleaseLease(t.Context(), l.ID, &pharox.Usage{}); err != nil {
			t.Fatal(err)
		}
		return rs
	}, func(rs *retryingStore) {
		if err := rs.DeleteQuota(t.Context(), pharox.QuotaConsumer, req.ConsumerID); err != nil {
			t.Errorf("DeleteQuota sent twice: %v", err)
		}
		var err error
		if purged, err = rs.PurgeUsage(t.Context(), time.Now().Add(time.Hour)); err != nil {
			t.Errorf("PurgeUsage sent twice: %v", err)
		}
	}, func(rs *retryingStore) {
		if purged != 1 {
			t.Errorf("PurgeUsage sent twice reported %d buckets, want 1", purged)
		}
		if err := rs.DeleteQuota(t.Context(), pharox.QuotaConsumer, req.ConsumerID); !errors.Is(err, pharox.ErrQuotaNotFound) {
			t.Errorf("DeleteQuota again, a call of its own: err = %v, want ErrQuotaNotFound", err)
		}
	})
}

// TestDeleteDropsQuotaKeys checks that deleting proxies and pools removes
// their quotas and the pools' sets of exhausted allowances, while
// consumer quotas and usage buckets (history) stay, and that no
// consumer's set of active leases outlives its leases.
func TestDeleteDropsQuotaKeys(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	pool, ps, req := quotaPool(t, s, 3)
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: req.ConsumerID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 5, RequestsPerMinute: 100}})
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 5}})
	for _, p := range ps {
		setQuota(t, s, pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: p.ID, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1}})
	}
	for range 2 {
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ReleaseLease(ctx, l.ID, &pharox.Usage{Requests: 1, BytesSent: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteProxy(ctx, ps[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePool(ctx, pool.ID); err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, k := range keysUnder(t, s) {
		if !strings.HasPrefix(k, "once:") && !strings.HasPrefix(k, "usage:") {
			left = append(left, k)
		}
	}
	if want := []string{"cbyid", "cids", "consumers", "quotas"}; !slices.Equal(left, want) {
		t.Errorf("keys left after deleting the pool: %q, want %q and usage buckets", left, want)
	}
	fields, err := s.rdb.HKeys(ctx, s.prefix+"quotas").Result()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"consumer|" + req.ConsumerID.String()}; !slices.Equal(fields, want) {
		t.Errorf("quotas left: %q, want %q", fields, want)
	}
}
