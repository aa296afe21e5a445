package client_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/client"
)

// countingTransport counts the requests a client sends.
type countingTransport struct{ n atomic.Int32 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

// TestUsageAndQuotasEndToEnd drives quotas and usage through the real
// service: a quota's 429 comes back at once (no retry) as the
// *pharox.QuotaError a local Manager returns, with RetryAfter from the
// header, and usage reported at release is totalled with names.
func TestUsageAndQuotasEndToEnd(t *testing.T) {
	url := startServer(t)
	admin := newClient(t, url, adminKey)
	counter := &countingTransport{}
	worker, err := client.New(url, client.WithAPIKey(consumerKey), client.WithRetry(3, time.Millisecond),
		client.WithHTTPClient(&http.Client{Transport: counter}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pool := must(admin.CreatePool(ctx, "main", ""))
	must(admin.CreateProxy(ctx, pool.ID, &pharox.Proxy{Host: "10.80.0.1", Port: 80, Protocol: pharox.ProtocolHTTP}))
	consumer := must(admin.EnsureConsumer(ctx, "scraper-1"))

	if _, err := admin.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: -1}}); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("negative limit: err = %v, want ErrInvalidArgument", err)
	}
	q := must(admin.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1, BytesPerMonth: 1 << 40}}))
	if q.Name != "scraper-1" || q.MaxConcurrentLeases != 1 || q.BytesPerMonth != 1<<40 || q.Month.IsZero() {
		t.Fatalf("SetQuota = %+v", q)
	}
	if got := must(admin.Quota(ctx, pharox.QuotaConsumer, consumer.ID)); got.MaxConcurrentLeases != 1 {
		t.Fatalf("Quota = %+v", got)
	}
	if qs := must(admin.Quotas(ctx)); len(qs) != 1 || qs[0].SubjectID != consumer.ID {
		t.Fatalf("Quotas = %+v", qs)
	}

	req := api.AcquireRequest{PoolName: "main", ConsumerName: "scraper-1", Target: "example.org"}
	l := must(worker.Acquire(ctx, req))
	before := counter.n.Load()
	_, err = worker.Acquire(ctx, req)
	if sent := counter.n.Load() - before; sent != 1 {
		t.Errorf("a quota's 429 was sent %d times, want once (not retried)", sent)
	}
	if !errors.Is(err, pharox.ErrQuotaExceeded) {
		t.Fatalf("acquire over the cap: err = %v, want ErrQuotaExceeded", err)
	}
	qe, ok := errors.AsType[*pharox.QuotaError](err)
	if !ok {
		t.Fatalf("acquire over the cap: err = %v is not a *pharox.QuotaError", err)
	}
	if *qe != (pharox.QuotaError{Subject: pharox.QuotaConsumer, SubjectID: consumer.ID, Name: "scraper-1",
		Limit: pharox.LimitMaxConcurrentLeases, Value: 1, RetryAfter: time.Second}) {
		t.Fatalf("QuotaError = %+v", *qe)
	}
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 429 || ae.Detail != `Consumer "scraper-1" is over its quota max_concurrent_leases=1; retry in 1s` {
		t.Fatalf("APIError = %+v", ae)
	}

	rel := must(worker.ReleaseWithUsage(ctx, l.ID, pharox.Usage{Requests: 4, BytesSent: 300, BytesReceived: 7000}))
	if rel.Usage == nil || rel.Usage.BytesReceived != 7000 || rel.Target != "example.org" {
		t.Fatalf("ReleaseWithUsage = %+v", rel)
	}
	rows := must(admin.Usage(ctx, pharox.UsageQuery{GroupBy: pharox.UsageByConsumer, Since: time.Now().Add(-time.Hour)}))
	want := pharox.UsageRow{Key: consumer.ID.String(), Name: "scraper-1", Leases: 1, Usage: pharox.Usage{Requests: 4, BytesSent: 300, BytesReceived: 7000}}
	if len(rows) != 1 || rows[0] != want {
		t.Fatalf("Usage = %+v, want %+v", rows, want)
	}
	rows = must(admin.Usage(ctx, pharox.UsageQuery{GroupBy: pharox.UsageByTarget, PoolID: pool.ID, ConsumerID: consumer.ID}))
	if len(rows) != 1 || rows[0].Key != "example.org" {
		t.Fatalf("Usage by target = %+v", rows)
	}
	if _, err := admin.Usage(ctx, pharox.UsageQuery{GroupBy: "day"}); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("bad grouping: err = %v", err)
	}
	if got := must(admin.Quota(ctx, pharox.QuotaConsumer, consumer.ID)); got.BytesThisMonth != 7300 {
		t.Fatalf("month's bytes after the release = %d, want 7300", got.BytesThisMonth)
	}

	if err := admin.DeleteQuota(ctx, pharox.QuotaConsumer, consumer.ID); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "delete again", admin.DeleteQuota(ctx, pharox.QuotaConsumer, consumer.ID), pharox.ErrQuotaNotFound)
	_, err = admin.Quota(ctx, pharox.QuotaConsumer, consumer.ID)
	wantErr(t, "deleted quota", err, pharox.ErrQuotaNotFound)
	_, err = admin.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaPool, SubjectID: consumer.ID, QuotaLimits: pharox.QuotaLimits{RequestsPerMinute: 1}})
	wantErr(t, "quota of an unknown pool", err, pharox.ErrPoolNotFound)
	_, err = worker.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaPool, SubjectID: pool.ID, QuotaLimits: pharox.QuotaLimits{RequestsPerMinute: 1}})
	wantErr(t, "consumer key setting a quota", err, client.ErrForbidden)
}
