package storagetest

import (
	"cmp"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// quotaTests cover quotas ([pharox.UsageStore]): their storage, and their
// enforcement inside AcquireLease following [pharox.Quota.Admit] and
// [pharox.Quota.TakeToken].
var quotaTests = []subtest{
	{name: "SetGetListDelete", fn: testQuotaCRUD},
	{name: "Errors", fn: testQuotaErrors},
	{name: "CountersStartFromUsage", fn: testQuotaCountersFromUsage},
	{name: "ReleaseAddsBytes", fn: testQuotaReleaseAddsBytes},
	{name: "AdmitOrder", fn: testQuotaAdmitOrder},
	{name: "ConsumerCap", fn: testQuotaConsumerCap},
	{name: "ExpiredLeaseDoesNotCount", fn: testQuotaExpiredLease},
	{name: "PoolCap", fn: testQuotaPoolCap},
	{name: "RequestsPerMinute", fn: testQuotaRPM},
	{name: "FailedAcquisitionTakesNoToken", fn: testQuotaFailedTakesNoToken},
	{name: "TokensRefill", fn: testQuotaRefill},
	{name: "BytesPerDay", fn: testQuotaBytesPerDay},
	{name: "PoolBytesPerMonth", fn: testQuotaPoolBytesPerMonth},
	{name: "ProxyAllowance", fn: testQuotaProxyAllowance},
	{name: "ProxyAllowanceOnlyProxy", fn: testQuotaProxyAllowanceOnly},
	{name: "IdempotentRetryNotRefused", fn: testQuotaIdempotentRetry},
	{name: "DeletePoolAndProxyDropQuotas", fn: testQuotaDeleteDrops},
}

// setQuota sets a quota and fails the test on error.
func (f *fixture) setQuota(q pharox.Quota) *pharox.Quota {
	f.t.Helper()
	out, err := f.s.SetQuota(f.ctx, q)
	if err != nil {
		f.t.Fatalf("SetQuota(%s %s, %+v): %v", q.Subject, q.SubjectID, q.QuotaLimits, err)
	}
	if out == nil {
		f.t.Fatalf("SetQuota(%s %s) returned nil and no error", q.Subject, q.SubjectID)
	}
	return out
}

func (f *fixture) getQuota(subject pharox.QuotaSubject, id uuid.UUID) *pharox.Quota {
	f.t.Helper()
	q, err := f.s.GetQuota(f.ctx, subject, id)
	if err != nil {
		f.t.Fatalf("GetQuota(%s %s): %v", subject, id, err)
	}
	return q
}

func consumerQuota(id uuid.UUID, l pharox.QuotaLimits) pharox.Quota {
	return pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: id, QuotaLimits: l}
}

func poolQuota(id uuid.UUID, l pharox.QuotaLimits) pharox.Quota {
	return pharox.Quota{Subject: pharox.QuotaPool, SubjectID: id, QuotaLimits: l}
}

func proxyQuota(id uuid.UUID, l pharox.QuotaLimits) pharox.Quota {
	return pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: id, QuotaLimits: l}
}

// refused asserts that AcquireLease fails with a *QuotaError of subject
// (subject, id) and limit, and returns a copy of it.
func (f *fixture) refused(req pharox.AcquireRequest, subject pharox.QuotaSubject, id uuid.UUID, limit string, why string) pharox.QuotaError {
	f.t.Helper()
	l, err := f.s.AcquireLease(f.ctx, req)
	qe, ok := errors.AsType[*pharox.QuotaError](err)
	if !ok {
		f.t.Fatalf("AcquireLease (%s): got lease on %v, err %v; want a *QuotaError (%s %s)", why, leaseProxy(l), err, subject, limit)
	}
	if !errors.Is(err, pharox.ErrQuotaExceeded) {
		f.t.Fatalf("AcquireLease (%s): %v does not match ErrQuotaExceeded", why, err)
	}
	if qe.Subject != subject || qe.SubjectID != id || qe.Limit != limit {
		f.t.Fatalf("AcquireLease (%s): refused by %s %s limit %s, want %s %s limit %s", why, qe.Subject, qe.SubjectID, qe.Limit, subject, id, limit)
	}
	if qe.RetryAfter <= 0 {
		f.t.Fatalf("AcquireLease (%s): QuotaError.RetryAfter = %v, want > 0", why, qe.RetryAfter)
	}
	if qe.Name != "" {
		f.t.Errorf("AcquireLease (%s): QuotaError.Name = %q; stores leave names to the Manager", why, qe.Name)
	}
	return *qe
}

// activeLeases counts the store's active leases of pool and the slots its
// proxies count, which must agree.
func (f *fixture) activeLeases(pool *pharox.Pool) int {
	f.t.Helper()
	n := len(f.leases(pharox.LeaseQuery{PoolID: pool.ID, Status: pharox.LeaseActive}))
	if st := f.stats(pool.Name); st.TotalLeases != n {
		f.t.Fatalf("pool %q: %d active leases listed, stats count %d", pool.Name, n, st.TotalLeases)
	}
	return n
}

func testQuotaCRUD(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	ps := f.addN(pool, 2, 0)
	other := f.consumerNamed("quota-other")
	before := time.Now()
	cq := f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: 3, RequestsPerMinute: 60, BytesPerDay: 1 << 30}))
	after := time.Now()
	if cq.Subject != pharox.QuotaConsumer || cq.SubjectID != f.consumer.ID ||
		cq.QuotaLimits != (pharox.QuotaLimits{MaxConcurrentLeases: 3, RequestsPerMinute: 60, BytesPerDay: 1 << 30}) {
		t.Fatalf("SetQuota returned %+v", cq)
	}
	plausibleNow(t, "quota UpdatedAt", cq.UpdatedAt, before, after)
	if !cq.Day.Equal(pharox.DayStart(cq.UpdatedAt)) || !cq.Month.Equal(pharox.MonthStart(cq.UpdatedAt)) {
		t.Fatalf("a new quota has Day %v, Month %v; want the day and month of %v", cq.Day, cq.Month, cq.UpdatedAt)
	}
	if cq.BytesToday != 0 || cq.BytesThisMonth != 0 {
		t.Fatalf("a new quota of a consumer without usage counts %d bytes today, %d this month", cq.BytesToday, cq.BytesThisMonth)
	}
	if cq.Name != "" {
		t.Errorf("SetQuota returned Name %q; stores leave names to the Manager", cq.Name)
	}
	cq.MaxConcurrentLeases = 99 // the caller's copy
	got := f.getQuota(pharox.QuotaConsumer, f.consumer.ID)
	if got.MaxConcurrentLeases != 3 || got.RequestsPerMinute != 60 || got.BytesPerDay != 1<<30 || got.BytesPerMonth != 0 {
		t.Fatalf("GetQuota = %+v, want the limits set", got.QuotaLimits)
	}
	// Replacing keeps the counters and sets every limit (zero unsets).
	upd := f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{BytesPerMonth: 5000}))
	if upd.QuotaLimits != (pharox.QuotaLimits{BytesPerMonth: 5000}) {
		t.Fatalf("SetQuota on an existing quota returned limits %+v, want exactly the new ones", upd.QuotaLimits)
	}
	if upd.UpdatedAt.Before(got.UpdatedAt) {
		t.Fatalf("UpdatedAt went back from %v to %v", got.UpdatedAt, upd.UpdatedAt)
	}

	pq := f.setQuota(poolQuota(pool.ID, pharox.QuotaLimits{MaxConcurrentLeases: 10}))
	xq := f.setQuota(proxyQuota(ps[1].ID, pharox.QuotaLimits{BytesPerDay: 100}))
	yq := f.setQuota(proxyQuota(ps[0].ID, pharox.QuotaLimits{BytesPerMonth: 100}))
	oq := f.setQuota(consumerQuota(other.ID, pharox.QuotaLimits{RequestsPerMinute: 1}))
	list, err := f.s.ListQuotas(f.ctx)
	if err != nil {
		t.Fatalf("ListQuotas: %v", err)
	}
	rank := map[pharox.QuotaSubject]int{pharox.QuotaConsumer: 0, pharox.QuotaPool: 1, pharox.QuotaProxy: 2}
	want := []*pharox.Quota{upd, pq, xq, yq, oq}
	slices.SortFunc(want, func(a, b *pharox.Quota) int {
		if c := cmp.Compare(rank[a.Subject], rank[b.Subject]); c != 0 {
			return c
		}
		return cmp.Compare(a.SubjectID.String(), b.SubjectID.String())
	})
	if len(list) != len(want) {
		t.Fatalf("ListQuotas: %d quotas, want %d", len(list), len(want))
	}
	for i := range want {
		if list[i].Subject != want[i].Subject || list[i].SubjectID != want[i].SubjectID || list[i].QuotaLimits != want[i].QuotaLimits {
			t.Fatalf("ListQuotas[%d] = %s %s %+v, want %s %s %+v (ordered by subject, then id)",
				i, list[i].Subject, list[i].SubjectID, list[i].QuotaLimits, want[i].Subject, want[i].SubjectID, want[i].QuotaLimits)
		}
		if list[i].Day.IsZero() || list[i].Month.IsZero() {
			t.Fatalf("ListQuotas[%d] has no Day or Month: %+v", i, list[i])
		}
	}

	if err := f.s.DeleteQuota(f.ctx, pharox.QuotaConsumer, f.consumer.ID); err != nil {
		t.Fatalf("DeleteQuota: %v", err)
	}
	_, err = f.s.GetQuota(f.ctx, pharox.QuotaConsumer, f.consumer.ID)
	wantErr(t, "GetQuota after DeleteQuota", err, pharox.ErrQuotaNotFound)
	wantErr(t, "DeleteQuota twice", f.s.DeleteQuota(f.ctx, pharox.QuotaConsumer, f.consumer.ID), pharox.ErrQuotaNotFound)
	// Subjects are distinct: the pool's quota is not the consumer's.
	_, err = f.s.GetQuota(f.ctx, pharox.QuotaConsumer, pool.ID)
	wantErr(t, "GetQuota(consumer, a pool's id)", err, pharox.ErrQuotaNotFound)
	if got := f.getQuota(pharox.QuotaPool, pool.ID); got.MaxConcurrentLeases != 10 {
		t.Fatalf("the pool's quota after deleting the consumer's: %+v", got.QuotaLimits)
	}
	// A new quota after a delete starts afresh.
	again := f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: 1}))
	if again.QuotaLimits != (pharox.QuotaLimits{MaxConcurrentLeases: 1}) {
		t.Fatalf("SetQuota after DeleteQuota returned limits %+v", again.QuotaLimits)
	}
}

func testQuotaErrors(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	ps := f.addN(pool, 1, 0)
	for _, tc := range []struct {
		name string
		q    pharox.Quota
		want error
	}{
		{"no limit", consumerQuota(f.consumer.ID, pharox.QuotaLimits{}), pharox.ErrInvalidArgument},
		{"negative", consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: -1}), pharox.ErrInvalidArgument},
		{"unknown subject", pharox.Quota{Subject: "site", SubjectID: f.consumer.ID, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1}}, pharox.ErrInvalidArgument},
		{"empty id", consumerQuota(uuid.Nil, pharox.QuotaLimits{BytesPerDay: 1}), pharox.ErrInvalidArgument},
		{"proxy with a lease cap", proxyQuota(ps[0].ID, pharox.QuotaLimits{MaxConcurrentLeases: 1}), pharox.ErrInvalidArgument},
		{"proxy with a request rate", proxyQuota(ps[0].ID, pharox.QuotaLimits{RequestsPerMinute: 1}), pharox.ErrInvalidArgument},
		{"unknown consumer", consumerQuota(uuid.New(), pharox.QuotaLimits{BytesPerDay: 1}), pharox.ErrConsumerNotFound},
		{"unknown pool", poolQuota(uuid.New(), pharox.QuotaLimits{BytesPerDay: 1}), pharox.ErrPoolNotFound},
		{"unknown proxy", proxyQuota(uuid.New(), pharox.QuotaLimits{BytesPerDay: 1}), pharox.ErrProxyNotFound},
		{"a pool's id as a consumer", consumerQuota(pool.ID, pharox.QuotaLimits{BytesPerDay: 1}), pharox.ErrConsumerNotFound},
	} {
		q, err := f.s.SetQuota(f.ctx, tc.q)
		if err == nil {
			t.Errorf("SetQuota(%s) = %+v, nil; want %v", tc.name, q, tc.want)
			continue
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("SetQuota(%s): err = %v, want %v", tc.name, err, tc.want)
		}
	}
	if qs, err := f.s.ListQuotas(f.ctx); err != nil || len(qs) != 0 {
		t.Fatalf("ListQuotas after only failed SetQuota calls = %d quotas, %v; want none", len(qs), err)
	}
	_, err := f.s.GetQuota(f.ctx, pharox.QuotaPool, pool.ID)
	wantErr(t, "GetQuota without a quota", err, pharox.ErrQuotaNotFound)
	wantErr(t, "DeleteQuota without a quota", f.s.DeleteQuota(f.ctx, pharox.QuotaProxy, ps[0].ID), pharox.ErrQuotaNotFound)
	// A pool quota does not refuse acquisitions for lack of limits it
	// does not set: no quota means no refusal.
	f.release(f.acquire(f.req(pool.Name)).ID)
}

// testQuotaCountersFromUsage: a new quota's byte counters start from the
// subject's usage of the current day and month.
func testQuotaCountersFromUsage(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	ps := f.addN(pool, 2, 0)
	other := f.consumerNamed("quota-other")
	var byProxy = map[uuid.UUID]int64{}
	var mine, all int64
	var last time.Time
	for i := range 4 {
		c := f.consumer
		if i == 3 {
			c = other
		}
		req := as(f.req(pool.Name), c)
		req.Strategy = pharox.RoundRobin
		l := f.acquire(req)
		u := pharox.Usage{Requests: 1, BytesSent: int64(10 * (i + 1)), BytesReceived: int64(1000 * (i + 1))}
		rel := f.releaseUsage(l.ID, u)
		last = *rel.ReleasedAt
		byProxy[l.ProxyID] += u.Bytes()
		all += u.Bytes()
		if c == f.consumer {
			mine += u.Bytes()
		}
	}
	check := func(q *pharox.Quota, want int64) {
		t.Helper()
		wantDay, wantMonth := want, want
		if !pharox.DayStart(last).Equal(q.Day) {
			wantDay = 0 // the day turned during the test
		}
		if !pharox.MonthStart(last).Equal(q.Month) {
			wantMonth = 0
		}
		if q.BytesToday != wantDay || q.BytesThisMonth != wantMonth {
			t.Fatalf("new %s quota: BytesToday %d, BytesThisMonth %d; want %d, %d from the usage released so far",
				q.Subject, q.BytesToday, q.BytesThisMonth, wantDay, wantMonth)
		}
	}
	check(f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{BytesPerDay: 1 << 40})), mine)
	check(f.setQuota(consumerQuota(other.ID, pharox.QuotaLimits{BytesPerMonth: 1 << 40})), all-mine)
	check(f.setQuota(poolQuota(pool.ID, pharox.QuotaLimits{MaxConcurrentLeases: 100})), all)
	for _, p := range ps {
		check(f.setQuota(proxyQuota(p.ID, pharox.QuotaLimits{BytesPerMonth: 1 << 40})), byProxy[p.ID])
		check(f.getQuota(pharox.QuotaProxy, p.ID), byProxy[p.ID])
	}
	// Setting an existing quota keeps its counters (it does not recount).
	check(f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{BytesPerDay: 1 << 41})), mine)
}

// testQuotaReleaseAddsBytes: a release with usage adds its bytes to the
// quotas of the lease's consumer, pool and proxy, and only theirs.
func testQuotaReleaseAddsBytes(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	ps := f.addN(pool, 1, 0)
	otherPool := f.pool("quotas-other")
	ops := f.addN(otherPool, 1, 0)
	other := f.consumerNamed("quota-other")
	limits := pharox.QuotaLimits{BytesPerDay: 1 << 40, BytesPerMonth: 1 << 41}
	f.setQuota(consumerQuota(f.consumer.ID, limits))
	f.setQuota(consumerQuota(other.ID, limits))
	f.setQuota(poolQuota(pool.ID, limits))
	f.setQuota(poolQuota(otherPool.ID, limits))
	f.setQuota(proxyQuota(ps[0].ID, limits))
	f.setQuota(proxyQuota(ops[0].ID, limits))

	l := f.acquire(f.req(pool.Name))
	rel := f.releaseUsage(l.ID, pharox.Usage{Requests: 2, BytesSent: 300, BytesReceived: 4000})
	l = f.acquire(f.req(pool.Name))
	f.releaseUsage(l.ID, pharox.Usage{Requests: 1, BytesSent: 5, BytesReceived: 0})
	l = f.acquire(f.req(pool.Name))
	f.release(l.ID) // no report, nothing added
	day := pharox.DayStart(*rel.ReleasedAt)
	for _, c := range []struct {
		subject pharox.QuotaSubject
		id      uuid.UUID
		want    int64
	}{
		{pharox.QuotaConsumer, f.consumer.ID, 4305},
		{pharox.QuotaPool, pool.ID, 4305},
		{pharox.QuotaProxy, ps[0].ID, 4305},
		{pharox.QuotaConsumer, other.ID, 0},
		{pharox.QuotaPool, otherPool.ID, 0},
		{pharox.QuotaProxy, ops[0].ID, 0},
	} {
		q := f.getQuota(c.subject, c.id)
		if !q.Day.Equal(day) {
			continue // the day turned during the test
		}
		if q.BytesToday != c.want || q.BytesThisMonth != c.want {
			t.Errorf("%s %s quota after two reported releases: BytesToday %d, BytesThisMonth %d; want %d each",
				c.subject, c.id, q.BytesToday, q.BytesThisMonth, c.want)
		}
	}
}

// testQuotaAdmitOrder: the consumer is checked before the pool, and a
// quota's limits in Admit's order.
func testQuotaAdmitOrder(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	f.addN(pool, 3, 0)
	req := f.req(pool.Name)
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: 1, RequestsPerMinute: 1, BytesPerDay: 10}))
	f.setQuota(poolQuota(pool.ID, pharox.QuotaLimits{MaxConcurrentLeases: 1}))
	held := f.acquire(req)
	f.refused(req, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitMaxConcurrentLeases, "consumer and pool both at their cap, token gone")
	f.releaseUsage(held.ID, pharox.Usage{Requests: 1, BytesSent: 50, BytesReceived: 50})
	qe := f.refused(req, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitBytesPerDay, "over bytes_per_day and out of tokens")
	if qe.Value != 10 || qe.RetryAfter > 24*time.Hour {
		t.Fatalf("bytes_per_day refusal: Value %d, RetryAfter %v; want 10, at most a day", qe.Value, qe.RetryAfter)
	}
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{RequestsPerMinute: 1, BytesPerMonth: 60}))
	qe = f.refused(req, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitBytesPerMonth, "over bytes_per_month (counters kept) and out of tokens")
	if qe.Value != 60 || qe.RetryAfter > 31*24*time.Hour {
		t.Fatalf("bytes_per_month refusal: Value %d, RetryAfter %v; want 60, at most a month", qe.Value, qe.RetryAfter)
	}
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{RequestsPerMinute: 1}))
	qe = f.refused(req, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitRequestsPerMinute, "out of tokens")
	if qe.Value != 1 || qe.RetryAfter > time.Minute+time.Second {
		t.Fatalf("requests_per_minute refusal: Value %d, RetryAfter %v; want 1, at most a minute", qe.Value, qe.RetryAfter)
	}
	// The pool's cap still holds once the consumer has no quota.
	if err := f.s.DeleteQuota(f.ctx, pharox.QuotaConsumer, f.consumer.ID); err != nil {
		t.Fatalf("DeleteQuota: %v", err)
	}
	held = f.acquire(req)
	f.refused(req, pharox.QuotaPool, pool.ID, pharox.LimitMaxConcurrentLeases, "pool at its cap")
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: 1}))
	f.refused(req, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitMaxConcurrentLeases, "consumer and pool at their caps: the consumer comes first")
	f.release(held.ID)
}

func testQuotaConsumerCap(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	ps := f.addN(pool, 3, 0)
	other := f.consumerNamed("quota-other")
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: 2}))
	req := f.req(pool.Name)
	req.Strategy = pharox.LeastUsed
	a, b := f.acquire(req), f.acquire(req)
	qe := f.refused(req, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitMaxConcurrentLeases, "consumer at its cap of 2")
	if qe.Value != 2 {
		t.Fatalf("QuotaError.Value = %d, want the cap 2", qe.Value)
	}
	// The refusal took nothing: no lease, no slot.
	if n := f.activeLeases(pool); n != 2 {
		t.Fatalf("after a refused acquisition the pool has %d active leases, want 2", n)
	}
	slots := 0
	for _, p := range ps {
		slots += f.getProxy(p.ID).CurrentLeases
	}
	if slots != 2 {
		t.Fatalf("after a refused acquisition the proxies count %d leases, want 2", slots)
	}
	// Sticky requests are refused too, and bind nothing.
	sticky := req
	sticky.SessionKey, sticky.SessionTTL = "capped", time.Hour
	f.refused(sticky, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitMaxConcurrentLeases, "sticky request, consumer at its cap")
	// Other consumers are not limited by it.
	o := f.acquire(as(req, other))
	f.release(a.ID)
	c := f.acquire(req)
	f.refused(req, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitMaxConcurrentLeases, "consumer at its cap again")
	// Raising the cap admits at once; lowering it below the active
	// leases refuses until enough are released.
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: 3}))
	d := f.acquire(req)
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: 1}))
	f.release(b.ID)
	f.release(c.ID)
	f.refused(req, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitMaxConcurrentLeases, "cap lowered to 1 with one lease held")
	f.release(d.ID)
	f.release(f.acquire(req).ID)
	f.release(o.ID)
	if err := f.s.DeleteQuota(f.ctx, pharox.QuotaConsumer, f.consumer.ID); err != nil {
		t.Fatalf("DeleteQuota: %v", err)
	}
	for range 4 {
		f.acquire(req) // no quota, no cap
	}
}

func testQuotaExpiredLease(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	f.addN(pool, 2, 0)
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: 1}))
	f.setQuota(poolQuota(pool.ID, pharox.QuotaLimits{MaxConcurrentLeases: 1}))
	short := f.req(pool.Name)
	short.Duration = shortTTL
	f.acquire(short)
	f.refused(f.req(pool.Name), pharox.QuotaConsumer, f.consumer.ID, pharox.LimitMaxConcurrentLeases, "one unexpired lease held")
	time.Sleep(shortWait)
	// No cleanup ran: the expired lease must not count all the same.
	l := f.acquire(f.req(pool.Name))
	f.refused(f.req(pool.Name), pharox.QuotaConsumer, f.consumer.ID, pharox.LimitMaxConcurrentLeases, "the new lease held")
	f.release(l.ID)
}

func testQuotaPoolCap(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	f.addN(pool, 4, 0)
	free := f.pool("quotas-free")
	f.addN(free, 1, 0)
	other := f.consumerNamed("quota-other")
	f.setQuota(poolQuota(pool.ID, pharox.QuotaLimits{MaxConcurrentLeases: 2}))
	req := f.req(pool.Name)
	a := f.acquire(req)
	f.acquire(as(req, other))
	qe := f.refused(req, pharox.QuotaPool, pool.ID, pharox.LimitMaxConcurrentLeases, "pool at its cap of 2")
	if qe.Value != 2 {
		t.Fatalf("QuotaError.Value = %d, want 2", qe.Value)
	}
	f.refused(as(req, other), pharox.QuotaPool, pool.ID, pharox.LimitMaxConcurrentLeases, "pool at its cap, another consumer")
	if n := f.activeLeases(pool); n != 2 {
		t.Fatalf("after refused acquisitions the pool has %d active leases, want 2", n)
	}
	f.acquire(f.req(free.Name)) // another pool is not limited by it
	f.release(a.ID)
	f.acquire(as(req, other))
	f.refused(req, pharox.QuotaPool, pool.ID, pharox.LimitMaxConcurrentLeases, "pool at its cap again")
}

func testQuotaRPM(t *testing.T, f *fixture) {
	window := f.cfg.caps.RequestRateWindow
	pool := f.pool("quotas")
	f.addN(pool, 2, 0)
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{RequestsPerMinute: 2}))
	req := f.req(pool.Name)
	f.release(f.acquire(req).ID)
	f.release(f.acquire(req).ID)
	qe := f.refused(req, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitRequestsPerMinute, "third acquisition at 2 per minute")
	maxWait := 31 * time.Second // a token every 30s
	if window {
		maxWait = time.Minute
	}
	if qe.Value != 2 || qe.RetryAfter > maxWait {
		t.Fatalf("requests_per_minute refusal: Value %d, RetryAfter %v; want 2, in (0, %v]", qe.Value, qe.RetryAfter, maxWait)
	}
	// Another consumer has its own bucket; a pool's bucket is shared.
	other := f.consumerNamed("quota-other")
	f.acquire(as(req, other))
	f.setQuota(poolQuota(pool.ID, pharox.QuotaLimits{RequestsPerMinute: 1}))
	f.acquire(as(req, other))
	f.refused(as(req, other), pharox.QuotaPool, pool.ID, pharox.LimitRequestsPerMinute, "pool at 1 per minute")
}

// testQuotaFailedTakesNoToken: an acquisition that fails, for want of a
// proxy or refused by the pool's quota, takes none of the consumer's
// tokens.
func testQuotaFailedTakesNoToken(t *testing.T, f *fixture) {
	full := f.pool("quotas-full")
	fp := f.addN(full, 1, 1)
	capped := f.pool("quotas-capped")
	f.addN(capped, 1, 0)
	open := f.pool("quotas-open")
	f.addN(open, 1, 0)
	other := f.consumerNamed("quota-other")
	f.acquire(as(f.req(full.Name), other))
	f.acquire(as(f.req(capped.Name), other))
	f.setQuota(poolQuota(capped.ID, pharox.QuotaLimits{MaxConcurrentLeases: 1}))
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{RequestsPerMinute: 1}))
	for range 3 {
		f.noProxy(f.req(full.Name), "the pool's only proxy is full")
		f.refused(f.req(capped.Name), pharox.QuotaPool, capped.ID, pharox.LimitMaxConcurrentLeases, "pool at its cap")
	}
	f.wantCurrent(fp[0].ID, 1)
	// A failed sticky acquisition takes no token either.
	sticky := f.sticky(full.Name, "k")
	f.noProxy(sticky, "sticky, the pool's only proxy is full")
	f.acquire(f.req(open.Name)) // the one token is still there
	f.refused(f.req(open.Name), pharox.QuotaConsumer, f.consumer.ID, pharox.LimitRequestsPerMinute, "the token taken")
}

// testQuotaRefill: tokens come back at RequestsPerMinute per minute. A
// bucket emptied at 1 per minute is set to 600 per minute (an existing
// quota keeps its tokens): it then refills by 10 a second, so acquisitions
// in a row succeed no faster than that, and a pause of 300ms gives back
// at least 3.
func testQuotaRefill(t *testing.T, f *fixture) {
	if f.cfg.caps.RequestRateWindow {
		t.Skip("the store limits requests per fixed minute window (Capabilities.RequestRateWindow), not by a refilling bucket")
	}
	pool := f.pool("quotas")
	f.addN(pool, 1, 0)
	req := f.req(pool.Name)
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{RequestsPerMinute: 1}))
	start := time.Now()
	f.release(f.acquire(req).ID)
	q := f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{RequestsPerMinute: 600}))
	if q.RequestsPerMinute != 600 {
		t.Fatalf("SetQuota returned %+v", q.QuotaLimits)
	}
	const attempts = 40
	ok := 1
	refused := false
	for range attempts {
		l, err := f.s.AcquireLease(f.ctx, req)
		if err != nil {
			if qe, is := errors.AsType[*pharox.QuotaError](err); !is || qe.Limit != pharox.LimitRequestsPerMinute {
				t.Fatalf("AcquireLease while the bucket refills: %v, want success or a requests_per_minute refusal", err)
			}
			refused = true
			break
		}
		ok++
		f.release(l.ID)
	}
	elapsed := time.Since(start)
	if limit := 2 + int(elapsed.Seconds()*10); ok > limit {
		t.Fatalf("%d acquisitions succeeded in %v from an empty bucket refilling at 600 per minute; at most %d can", ok, elapsed, limit)
	}
	t.Logf("%d acquisitions in %v before a refusal (%v)", ok, elapsed, refused)
	time.Sleep(300 * time.Millisecond)
	for i := range 3 {
		l, err := f.s.AcquireLease(f.ctx, req)
		if err != nil {
			t.Fatalf("acquisition %d after a 300ms pause at 600 per minute (3 tokens back at least): %v", i+1, err)
		}
		f.release(l.ID)
	}
}

func testQuotaBytesPerDay(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	f.addN(pool, 1, 0)
	req := f.req(pool.Name)
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{BytesPerDay: 1000}))
	f.releaseUsage(f.acquire(req).ID, pharox.Usage{BytesSent: 100, BytesReceived: 500})
	l := f.acquire(req) // 600 < 1000
	// A lease active while the limit is crossed is not ended by it.
	rel := f.releaseUsage(l.ID, pharox.Usage{BytesSent: 100, BytesReceived: 500})
	qe := f.refused(req, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitBytesPerDay, "1200 bytes today at 1000 a day")
	if qe.Value != 1000 {
		t.Fatalf("QuotaError.Value = %d, want 1000", qe.Value)
	}
	untilMidnight := pharox.DayStart(*rel.ReleasedAt).Add(24 * time.Hour).Sub(*rel.ReleasedAt)
	if qe.RetryAfter > untilMidnight+clockSlack {
		t.Fatalf("bytes_per_day RetryAfter = %v, want about the %v to the end of the UTC day", qe.RetryAfter, untilMidnight)
	}
	q := f.getQuota(pharox.QuotaConsumer, f.consumer.ID)
	if q.Day.Equal(pharox.DayStart(*rel.ReleasedAt)) && q.BytesToday != 1200 {
		t.Fatalf("GetQuota: BytesToday = %d, want 1200", q.BytesToday)
	}
	// Raising the limit admits again.
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{BytesPerDay: 2000}))
	f.release(f.acquire(req).ID)
}

func testQuotaPoolBytesPerMonth(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	f.addN(pool, 1, 0)
	other := f.consumerNamed("quota-other")
	req := f.req(pool.Name)
	f.setQuota(poolQuota(pool.ID, pharox.QuotaLimits{BytesPerMonth: 100}))
	f.releaseUsage(f.acquire(as(req, other)).ID, pharox.Usage{BytesReceived: 100})
	f.refused(req, pharox.QuotaPool, pool.ID, pharox.LimitBytesPerMonth, "the pool used its 100 bytes this month")
	if err := f.s.DeleteQuota(f.ctx, pharox.QuotaPool, pool.ID); err != nil {
		t.Fatalf("DeleteQuota: %v", err)
	}
	f.release(f.acquire(req).ID)
}

// testQuotaProxyAllowance: a proxy over its byte quota is not a
// candidate, a sticky binding to it included, until its quota allows it
// again.
func testQuotaProxyAllowance(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	ps := f.addN(pool, 2, 1)
	nm := names{ps[0].ID: "p0", ps[1].ID: "p1"}
	sticky := f.sticky(pool.Name, "user-1")
	first := f.acquire(sticky)
	spent, fresh := first.ProxyID, ps[0].ID
	if spent == fresh {
		fresh = ps[1].ID
	}
	f.setQuota(proxyQuota(spent, pharox.QuotaLimits{BytesPerDay: 1000}))
	f.releaseUsage(first.ID, pharox.Usage{Requests: 1, BytesSent: 200, BytesReceived: 900})
	q := f.getQuota(pharox.QuotaProxy, spent)
	if !q.Exhausted(time.Now()) && q.Day.Equal(pharox.DayStart(time.Now())) {
		t.Fatalf("proxy quota after 1100 bytes at 1000 a day: %+v, want exhausted", q)
	}
	// The sticky key moves off the spent proxy.
	if l := f.acquire(sticky); l.ProxyID != fresh {
		t.Fatalf("sticky acquisition bound to a proxy over its allowance leased %s, want %s", nm.of(l.ProxyID), nm.of(fresh))
	} else {
		f.release(l.ID)
	}
	got := f.leasedProxies(f.req(pool.Name), 5)
	if len(got) != 1 || !got[fresh] {
		t.Fatalf("leasing the pool dry gave %v, want only %s: %s is over its allowance", got, nm.of(fresh), nm.of(spent))
	}
	for _, st := range pharox.AllStrategies {
		req := f.req(pool.Name)
		req.Strategy = st
		if got := f.leasedProxies(req, 5); len(got) != 1 || !got[fresh] {
			t.Fatalf("%s: leased %v, want only %s", st, got, nm.of(fresh))
		}
	}
	// A new quota lowered below the proxy's usage so far exhausts it at
	// once: its counters start from the buckets.
	f.releaseUsage(f.acquire(f.req(pool.Name)).ID, pharox.Usage{BytesSent: 300})
	f.setQuota(proxyQuota(fresh, pharox.QuotaLimits{BytesPerMonth: 300}))
	f.noProxy(f.req(pool.Name), "both proxies over their allowance")
	f.noProxy(sticky, "sticky, both proxies over their allowance")
	// Raising a limit, or deleting the quota, makes the proxy a candidate
	// again.
	f.setQuota(proxyQuota(spent, pharox.QuotaLimits{BytesPerDay: 1 << 40}))
	if got := f.leasedProxies(f.req(pool.Name), 5); len(got) != 1 || !got[spent] {
		t.Fatalf("after raising %s's allowance: leased %v, want only it", nm.of(spent), got)
	}
	if err := f.s.DeleteQuota(f.ctx, pharox.QuotaProxy, fresh); err != nil {
		t.Fatalf("DeleteQuota: %v", err)
	}
	if got := f.leasedProxies(f.req(pool.Name), 5); len(got) != 2 {
		t.Fatalf("after deleting %s's quota: leased %v, want both proxies", nm.of(fresh), got)
	}
}

func testQuotaProxyAllowanceOnly(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	ps := f.addN(pool, 1, 0)
	f.setQuota(proxyQuota(ps[0].ID, pharox.QuotaLimits{BytesPerDay: 10}))
	f.releaseUsage(f.acquire(f.req(pool.Name)).ID, pharox.Usage{BytesReceived: 10})
	f.noProxy(f.req(pool.Name), "the pool's only proxy is over its allowance")
	if n := f.activeLeases(pool); n != 0 {
		t.Fatalf("a refused acquisition left %d active leases", n)
	}
}

// testQuotaIdempotentRetry: an acquisition retried with the LeaseID of a
// lease it got is answered with that lease, whatever the quotas say, and
// takes no token.
func testQuotaIdempotentRetry(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	f.addN(pool, 2, 0)
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: 1, RequestsPerMinute: 1}))
	f.setQuota(poolQuota(pool.ID, pharox.QuotaLimits{MaxConcurrentLeases: 1}))
	req := f.req(pool.Name)
	req.LeaseID = uuid.New()
	l := f.acquire(req)
	for range 3 {
		again := f.acquire(req)
		if again.ID != l.ID || again.ProxyID != l.ProxyID {
			t.Fatalf("retried acquisition returned lease %s on %s, want %s on %s", again.ID, again.ProxyID, l.ID, l.ProxyID)
		}
	}
	if n := f.activeLeases(pool); n != 1 {
		t.Fatalf("retries left %d active leases, want 1", n)
	}
	f.release(l.ID)
	fresh := f.req(pool.Name)
	qe := f.refused(fresh, pharox.QuotaConsumer, f.consumer.ID, pharox.LimitRequestsPerMinute, "the one token taken by the first acquisition")
	if qe.RetryAfter > time.Minute+time.Second {
		t.Fatalf("requests_per_minute RetryAfter = %v after one acquisition and 3 retries at 1 per minute; want at most a minute (retries take no token)", qe.RetryAfter)
	}
	// A retry of the released lease still answers with it.
	if again := f.acquire(req); again.ID != l.ID || again.Status != pharox.LeaseReleased {
		t.Fatalf("retry after release returned lease %s (%s), want %s released", again.ID, again.Status, l.ID)
	}
}

func testQuotaDeleteDrops(t *testing.T, f *fixture) {
	pool := f.pool("quotas")
	ps := f.addN(pool, 3, 0)
	keep := f.pool("quotas-keep")
	f.setQuota(poolQuota(pool.ID, pharox.QuotaLimits{MaxConcurrentLeases: 5}))
	f.setQuota(poolQuota(keep.ID, pharox.QuotaLimits{MaxConcurrentLeases: 5}))
	for _, p := range ps {
		f.setQuota(proxyQuota(p.ID, pharox.QuotaLimits{BytesPerDay: 5}))
	}
	f.setQuota(consumerQuota(f.consumer.ID, pharox.QuotaLimits{MaxConcurrentLeases: 5}))
	if err := f.s.DeleteProxy(f.ctx, ps[0].ID); err != nil {
		t.Fatalf("DeleteProxy: %v", err)
	}
	_, err := f.s.GetQuota(f.ctx, pharox.QuotaProxy, ps[0].ID)
	wantErr(t, "GetQuota of a deleted proxy", err, pharox.ErrQuotaNotFound)
	if err := f.s.DeletePool(f.ctx, pool.ID); err != nil {
		t.Fatalf("DeletePool: %v", err)
	}
	_, err = f.s.GetQuota(f.ctx, pharox.QuotaPool, pool.ID)
	wantErr(t, "GetQuota of a deleted pool", err, pharox.ErrQuotaNotFound)
	for _, p := range ps[1:] {
		_, err = f.s.GetQuota(f.ctx, pharox.QuotaProxy, p.ID)
		wantErr(t, "GetQuota of a deleted pool's proxy", err, pharox.ErrQuotaNotFound)
	}
	qs, err := f.s.ListQuotas(f.ctx)
	if err != nil {
		t.Fatalf("ListQuotas: %v", err)
	}
	if len(qs) != 2 || qs[0].SubjectID != f.consumer.ID || qs[1].SubjectID != keep.ID {
		t.Fatalf("ListQuotas after deleting a pool and a proxy: %d quotas, want the consumer's and the other pool's", len(qs))
	}
	// A pool created again under the name has no quota.
	again := f.pool("quotas")
	_, err = f.s.GetQuota(f.ctx, pharox.QuotaPool, again.ID)
	wantErr(t, "GetQuota of a new pool", err, pharox.ErrQuotaNotFound)
}
