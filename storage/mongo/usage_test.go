package mongo

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/event"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/mongotest"
)

// TestUsageExactUnderConcurrency releases leases with usage reports from
// two store instances on one database (as two processes would), many at
// once, all into one bucket and onto the same quotas: the buckets and the
// quotas' byte counters must add up exactly. FerretDB v1 applies $inc as a
// read and a write, so counters that two writers update lose increments;
// the store's per-instance counters must not.
func TestUsageExactUnderConcurrency(t *testing.T) {
	db := mongotest.UniqueName("pxt_")
	a := openDB(t, db, true)
	b := openDB(t, db, false)
	ctx := context.Background()
	pool, err := a.CreatePool(ctx, pharox.Pool{Name: "exact"})
	if err != nil {
		t.Fatal(err)
	}
	// One proxy without a concurrency limit: every release goes into the
	// same (hour, consumer, proxy, pool, target) bucket.
	ps, err := a.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.0.0.1", Port: 8080, Protocol: pharox.ProtocolHTTP}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.EnsureConsumer(ctx, "exact")
	if err != nil {
		t.Fatal(err)
	}
	limits := pharox.QuotaLimits{BytesPerDay: 1 << 50, BytesPerMonth: 1 << 50}
	for _, q := range []pharox.Quota{
		{Subject: pharox.QuotaConsumer, SubjectID: c.ID, QuotaLimits: limits},
		{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: limits},
		{Subject: pharox.QuotaProxy, SubjectID: ps[0].ID, QuotaLimits: limits},
	} {
		if _, err := a.SetQuota(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	const goroutines, each = 6, 5
	req := pharox.AcquireRequest{PoolName: "exact", ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Minute,
		Strategy: pharox.FirstAvailable, Target: "example.com"}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := range goroutines {
		s := a
		if g%2 == 1 {
			s = b
		}
		wg.Go(func() {
			for i := range each {
				l, err := s.AcquireLease(ctx, req)
				if err != nil {
					errs <- err
					return
				}
				u := pharox.Usage{Requests: 1, BytesSent: int64(100 + g), BytesReceived: int64(1000 * (i + 1))}
				if _, err := s.ReleaseLease(ctx, l.ID, &u); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var want pharox.Usage
	for g := range goroutines {
		for i := range each {
			want = want.Add(pharox.Usage{Requests: 1, BytesSent: int64(100 + g), BytesReceived: int64(1000 * (i + 1))})
		}
	}
	rows, err := b.QueryUsage(ctx, pharox.UsageQuery{GroupBy: pharox.UsageByTarget})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Key != "example.com" || rows[0].Leases != goroutines*each || rows[0].Usage != want {
		t.Fatalf("QueryUsage after %d concurrent releases = %+v; want one row of %d leases, %+v", goroutines*each, rows, goroutines*each, want)
	}
	for _, q := range []struct {
		subject pharox.QuotaSubject
		id      uuid.UUID
	}{{pharox.QuotaConsumer, c.ID}, {pharox.QuotaPool, pool.ID}, {pharox.QuotaProxy, ps[0].ID}} {
		got, err := a.GetQuota(ctx, q.subject, q.id)
		if err != nil {
			t.Fatal(err)
		}
		if got.Day.Equal(pharox.DayStart(time.Now())) && got.BytesToday != want.Bytes() || got.Month.Equal(pharox.MonthStart(time.Now())) && got.BytesThisMonth != want.Bytes() {
			t.Fatalf("%s quota after %d concurrent releases: %d bytes today, %d this month; want %d",
				q.subject, goroutines*each, got.BytesToday, got.BytesThisMonth, want.Bytes())
		}
	}
}

// TestQuotasReadOnlyWhereTheyApply checks that acquisitions read the
// quotas collection only from pools some quota applies to: none before a
// quota is set, every pool's after a consumer quota, and none again once
// it is deleted.
func TestQuotasReadOnlyWhereTheyApply(t *testing.T) {
	counter := newCommandCounter()
	s, pool, consumer := seedBoundedPool(t, counter.monitor(), 2)
	ctx := context.Background()
	quotaReads := func(what string) int {
		t.Helper()
		counter.take()
		l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: pool, ConsumerID: consumer.ID, ConsumerName: consumer.Name,
			Duration: time.Minute, Strategy: pharox.FirstAvailable})
		if err != nil {
			t.Fatalf("AcquireLease (%s): %v", what, err)
		}
		n := counter.take()["find "+s.quotas.Name()]
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := quotaReads("no quota"); n != 0 {
		t.Fatalf("an acquisition without any quota read the quotas %d times; want none", n)
	}
	q := pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 5}}
	if _, err := s.SetQuota(ctx, q); err != nil {
		t.Fatal(err)
	}
	if n := quotaReads("consumer quota"); n != 1 {
		t.Fatalf("an acquisition by a consumer with a quota read the quotas %d times; want once", n)
	}
	if err := s.DeleteQuota(ctx, pharox.QuotaConsumer, consumer.ID); err != nil {
		t.Fatal(err)
	}
	if n := quotaReads("quota deleted"); n != 0 {
		t.Fatalf("an acquisition after the only quota was deleted read the quotas %d times; want none", n)
	}
}

// TestRequestsPerMinuteSlidingWindow pins down the declared window: after
// RequestsPerMinute acquisitions, the next one waits until the first of
// them is a minute old (a bucket would give a token back after 60/rpm
// seconds).
func TestRequestsPerMinuteSlidingWindow(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "rpm"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.0.0.1", Port: 8080, Protocol: pharox.ProtocolHTTP}}); err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "rpm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID, QuotaLimits: pharox.QuotaLimits{RequestsPerMinute: 2}}); err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: "rpm", ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Minute, Strategy: pharox.FirstAvailable}
	start := time.Now()
	for range 2 {
		if _, err := s.AcquireLease(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	_, err = s.AcquireLease(ctx, req)
	refusal, ok := errors.AsType[*pharox.QuotaError](err)
	if !ok || refusal.Limit != pharox.LimitRequestsPerMinute {
		t.Fatalf("third acquisition at 2 per minute: %v; want a requests_per_minute refusal", err)
	}
	// The first entry is a minute old at start + 1 minute at the latest.
	if lo := time.Minute - time.Since(start) - time.Second; refusal.RetryAfter < lo || refusal.RetryAfter > time.Minute {
		t.Fatalf("RetryAfter = %v; want the rest of the minute since the first acquisition (%v to %v)", refusal.RetryAfter, lo, time.Minute)
	}
}

// commandCounter counts the commands a client sends, by name and
// collection ("find pharox_quotas").
type commandCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func newCommandCounter() *commandCounter { return &commandCounter{n: map[string]int{}} }

func (c *commandCounter) monitor() *event.CommandMonitor {
	return &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
		coll, _ := e.Command.Lookup(e.CommandName).StringValueOK()
		c.mu.Lock()
		c.n[e.CommandName+" "+coll]++
		c.mu.Unlock()
	}}
}

func (c *commandCounter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.n
	c.n = map[string]int{}
	return out
}
