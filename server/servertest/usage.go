package servertest

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/observe"
	"github.com/pharox/pharox/server"
)

// Usage and quotas on the wire: a release reports the traffic its lease
// carried, GET /v1/usage totals it, and quotas refuse acquisitions with
// 429, Retry-After and a sentence naming the quota.

// meteredEnv is a server whose Manager feeds Prometheus, served at
// /metrics.
func meteredEnv(t *testing.T, newStore NewStore) *Env {
	t.Helper()
	reg := prometheus.NewRegistry()
	rec, err := observe.NewPrometheus(reg, observe.PrometheusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return newEnv(t, newStore(t), rec.ManagerOptions(), func(o *server.Options) { o.Registerer, o.Gatherer = reg, reg })
}

// releasePath is the path of a lease's release.
func releasePath(id fmt.Stringer) string { return "/v1/leases/" + id.String() + "/release" }

// usageReport reads GET /v1/usage with the query as the key.
func (e *Env) usageReport(t *testing.T, key, query string) api.UsageReport {
	t.Helper()
	var rep api.UsageReport
	e.Do("GET", "/v1/usage?"+query, key, nil).Expect(t, 200).Decode(t, &rep)
	if rep.Rows == nil {
		t.Fatalf("GET /v1/usage?%s: rows is null, want a list", query)
	}
	return rep
}

// row finds the row of key, failing the test when there is none.
func row(t *testing.T, rep api.UsageReport, key string) api.UsageRow {
	t.Helper()
	for _, r := range rep.Rows {
		if r.Key == key {
			return r
		}
	}
	t.Fatalf("usage by %s has no row %q: %+v", rep.GroupBy, key, rep.Rows)
	return api.UsageRow{}
}

// testUsageOverHTTP: a release reports usage in its optional body (none,
// {} or a null usage, as the Python SDK sends, count nothing); the lease
// keeps it and its target; GET /v1/usage totals it by every grouping,
// within since and until, for a pool or a consumer; a key bound to
// consumers sees only theirs; Prometheus counts bytes and requests by
// pool only.
func testUsageOverHTTP(t *testing.T, newStore NewStore) {
	e := meteredEnv(t, newStore)
	main := e.CreatePool("main")
	other := e.CreatePool("other")
	p1 := e.AddProxy(main, api.CreateProxyRequest{Host: "10.60.0.1", Port: 80})
	p2 := e.AddProxy(other, api.CreateProxyRequest{Host: "10.60.0.2", Port: 80})
	start := time.Now().Add(-time.Minute).UTC()
	since := start.Format(time.RFC3339)

	// The Python SDK releases with no body or {}: nothing is reported.
	for _, body := range []any{nil, "{}", `{"usage": null}`} {
		l := e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: "quiet"})
		var rel api.Lease
		e.Consumer("POST", releasePath(l.ID), body).Expect(t, 200).Decode(t, &rel)
		if rel.Status != "released" || rel.Usage != nil {
			t.Fatalf("release with body %v answered %+v, want released without usage", body, rel)
		}
	}

	l1 := e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: "scraper-1", Target: "https://www.shop.example.com/cart"})
	if l1.Target != "example.com" || l1.ProxyID != p1.ID {
		t.Fatalf("acquired %+v, want target example.com on %s", l1, p1.ID)
	}
	for body, field := range map[string]string{
		`{"usage": {"bytes_sent": -1}}`:                   "usage.bytes_sent",
		`{"usage": {"requests": "many"}}`:                 "usage.requests",
		`{"usage": {"bytes_received": 1e300}}`:            "usage.bytes_received",
		`{"usage": {"bytes_received": 2251799813685249}}`: "usage.bytes_received",
	} {
		r := e.Consumer("POST", releasePath(l1.ID), body).Expect(t, 422)
		if !strings.Contains(r.Detail(), field) {
			t.Errorf("release with %s: detail %q does not name %s", body, r.Detail(), field)
		}
	}
	var got api.Lease
	e.Consumer("GET", "/v1/leases/"+l1.ID.String(), nil).Expect(t, 200).Decode(t, &got)
	if got.Status != "active" {
		t.Fatalf("a refused release ended the lease: %+v", got)
	}
	u1 := pharox.Usage{Requests: 2, BytesSent: 100, BytesReceived: 5000}
	e.Consumer("POST", releasePath(l1.ID), api.ReleaseRequest{Usage: &u1}).Expect(t, 200).Decode(t, &got)
	if got.Status != "released" || got.Usage == nil || *got.Usage != u1 || got.Target != "example.com" {
		t.Fatalf("release with usage answered %+v", got)
	}
	// Released again, with usage again: answered as it ended, counted once.
	twice := pharox.Usage{Requests: 9, BytesSent: 9, BytesReceived: 9}
	e.Consumer("POST", releasePath(l1.ID), api.ReleaseRequest{Usage: &twice}).Expect(t, 200).Decode(t, &got)
	if got.Usage == nil || *got.Usage != u1 {
		t.Fatalf("second release answered usage %+v, want the first report %+v", got.Usage, u1)
	}
	e.Admin("GET", "/v1/leases/"+l1.ID.String(), nil).Expect(t, 200).Decode(t, &got)
	if got.Usage == nil || *got.Usage != u1 || got.Target != "example.com" {
		t.Fatalf("GET lease after release: %+v", got)
	}
	l2 := e.Acquire(api.AcquireRequest{PoolName: "other", ConsumerName: "scraper-2"})
	u2 := pharox.Usage{Requests: 1, BytesSent: 10, BytesReceived: 20}
	e.Consumer("POST", releasePath(l2.ID), api.ReleaseRequest{Usage: &u2}).Expect(t, 200)

	want1 := api.UsageRow{Key: l1.ConsumerID.String(), Name: "scraper-1", Leases: 1, Requests: 2, BytesSent: 100, BytesReceived: 5000}
	want2 := api.UsageRow{Key: l2.ConsumerID.String(), Name: "scraper-2", Leases: 1, Requests: 1, BytesSent: 10, BytesReceived: 20}
	rep := e.usageReport(t, AdminKey, "since="+since)
	if rep.GroupBy != "consumer" || len(rep.Rows) != 2 || row(t, rep, want1.Key) != want1 || row(t, rep, want2.Key) != want2 ||
		rep.Rows[0].Key > rep.Rows[1].Key {
		t.Fatalf("usage by consumer = %+v, want %+v and %+v ordered by key (nothing for the releases without usage)", rep.Rows, want1, want2)
	}
	if rep.Since == nil || !rep.Since.Equal(start.Truncate(time.Hour)) || rep.Until != nil {
		t.Fatalf("since %v until %v, want since at the start of its hour and no until", rep.Since, rep.Until)
	}
	for _, c := range []struct {
		query string
		key   string
		want  api.UsageRow
	}{
		{"group_by=pool", main.ID.String(), api.UsageRow{Name: "main", Leases: 1, Requests: 2, BytesSent: 100, BytesReceived: 5000}},
		{"group_by=pool", other.ID.String(), api.UsageRow{Name: "other", Leases: 1, Requests: 1, BytesSent: 10, BytesReceived: 20}},
		{"group_by=proxy", p1.ID.String(), api.UsageRow{Name: "10.60.0.1:80", Leases: 1, Requests: 2, BytesSent: 100, BytesReceived: 5000}},
		{"group_by=proxy", p2.ID.String(), api.UsageRow{Name: "10.60.0.2:80", Leases: 1, Requests: 1, BytesSent: 10, BytesReceived: 20}},
		{"group_by=target", "example.com", api.UsageRow{Leases: 1, Requests: 2, BytesSent: 100, BytesReceived: 5000}},
		{"group_by=target", "", api.UsageRow{Leases: 1, Requests: 1, BytesSent: 10, BytesReceived: 20}},
	} {
		c.want.Key = c.key
		rep := e.usageReport(t, AdminKey, c.query+"&since="+since)
		if len(rep.Rows) != 2 || row(t, rep, c.key) != c.want {
			t.Errorf("usage %s = %+v, want a row %+v among two", c.query, rep.Rows, c.want)
		}
	}

	// Filters by name or id, bounds in RFC 3339 or Unix seconds.
	unix := strconv.FormatInt(start.Unix(), 10)
	for _, c := range []struct {
		query string
		want  []api.UsageRow
	}{
		{"pool=main", []api.UsageRow{want1}},
		{"pool=" + other.ID.String(), []api.UsageRow{want2}},
		{"consumer=scraper-2", []api.UsageRow{want2}},
		{"consumer=" + l1.ConsumerID.String() + "&since=" + unix, []api.UsageRow{want1}},
		{"pool=main&consumer=scraper-2", []api.UsageRow{}},
		{"until=" + start.Add(-2*time.Hour).Format(time.RFC3339), []api.UsageRow{}},
		{"since=" + strconv.FormatInt(time.Now().Add(2*time.Hour).Unix(), 10), []api.UsageRow{}},
		{"since=" + unix + "&until=" + strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10), []api.UsageRow{want1, want2}},
	} {
		rep := e.usageReport(t, AdminKey, c.query)
		if len(rep.Rows) != len(c.want) {
			t.Errorf("usage ?%s = %+v, want %+v", c.query, rep.Rows, c.want)
			continue
		}
		for _, w := range c.want {
			if row(t, rep, w.Key) != w {
				t.Errorf("usage ?%s = %+v, want %+v", c.query, rep.Rows, c.want)
			}
		}
	}
	for query, word := range map[string]string{
		"group_by=day":    "group_by",
		"since=yesterday": "since",
		"until=soon":      "until",
		"since=" + unix + "&until=" + strconv.FormatInt(start.Add(-time.Hour).Unix(), 10): "before",
	} {
		if r := e.Admin("GET", "/v1/usage?"+query, nil).Expect(t, 422); !strings.Contains(r.Detail(), word) {
			t.Errorf("usage ?%s: detail %q does not say %q", query, r.Detail(), word)
		}
	}
	e.Admin("GET", "/v1/usage?pool=nope", nil).Expect(t, 404)
	if r := e.Admin("GET", "/v1/usage?consumer=nobody", nil).Expect(t, 404); !strings.Contains(r.Detail(), `"nobody"`) {
		t.Errorf("usage of an unknown consumer: detail %q does not name it", r.Detail())
	}

	// Who sees what: a key bound to scraper-1 sees its usage only, a
	// viewer all, a bootstrap consumer key (any consumer) nothing.
	k := e.CreateKey(api.CreateKeyRequest{Name: "s1", Role: "consumer", Consumers: []string{"scraper-1"}})
	rep = e.usageReport(t, k.Secret, "since="+since)
	if len(rep.Rows) != 1 || rep.Rows[0] != want1 {
		t.Fatalf("usage for a key bound to scraper-1 = %+v, want only %+v", rep.Rows, want1)
	}
	rep = e.usageReport(t, k.Secret, "group_by=pool&since="+since)
	if len(rep.Rows) != 1 || rep.Rows[0].Key != main.ID.String() || rep.Rows[0].BytesReceived != 5000 {
		t.Fatalf("usage by pool for a key bound to scraper-1 = %+v, want main with its 5000 bytes only", rep.Rows)
	}
	if r := e.Do("GET", "/v1/usage?consumer=scraper-2", k.Secret, nil).Expect(t, 403); !strings.Contains(r.Detail(), "scraper-2") {
		t.Errorf("another consumer's usage: detail %q", r.Detail())
	}
	v := e.CreateKey(api.CreateKeyRequest{Name: "wall", Role: "viewer"})
	if rep := e.usageReport(t, v.Secret, "since="+since); len(rep.Rows) != 2 {
		t.Fatalf("usage for a viewer = %+v, want both consumers", rep.Rows)
	}
	e.Consumer("GET", "/v1/usage", nil).Expect(t, 403)

	metrics := string(e.Admin("GET", "/metrics", nil).Expect(t, 200).Body)
	for _, want := range []string{
		`pharox_usage_bytes_total{direction="received",pool="main"} 5000`,
		`pharox_usage_bytes_total{direction="sent",pool="main"} 100`,
		`pharox_usage_bytes_total{direction="sent",pool="other"} 10`,
		`pharox_usage_requests_total{pool="main"} 2`,
		`pharox_usage_requests_total{pool="other"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, name := range []string{"scraper-1", "example.com"} {
		if strings.Contains(metrics, name) {
			t.Errorf("/metrics names %q: a label per consumer or site would grow with traffic", name)
		}
	}
}

// quotaRefusal is the body of a 429.
type quotaRefusal struct {
	Detail string            `json:"detail"`
	Quota  *api.QuotaRefusal `json:"quota"`
}

// expectRefused sends an acquisition that a quota must refuse and returns
// the answer's Retry-After in seconds and its body.
func (e *Env) expectRefused(t *testing.T, key string, req any) (int, quotaRefusal) {
	t.Helper()
	r := e.Do("POST", "/v1/leases/", key, req).Expect(t, 429)
	retry, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || retry < 1 {
		t.Fatalf("429 with Retry-After %q, want whole seconds, at least 1", r.Header.Get("Retry-After"))
	}
	var body quotaRefusal
	if err := json.Unmarshal(r.Body, &body); err != nil || body.Quota == nil {
		t.Fatalf("429 body %s: want a detail and a quota field", r.Body)
	}
	if body.Quota.RetryAfterSeconds != int64(retry) {
		t.Fatalf("429: quota.retry_after_seconds %d, Retry-After %d", body.Quota.RetryAfterSeconds, retry)
	}
	return retry, body
}

// testQuotasOverHTTP: quotas are set (a consumer by a name not seen yet
// included), read, listed and deleted; an acquisition over a consumer's or
// a pool's quota is 429 with Retry-After, a detail naming the quota and
// the quota field, whether the key names the consumer or the pool, and a
// wait waits a concurrency refusal out; a proxy over its allowance is not
// leased; bad limits are 422 and leave nothing behind; keys bound to
// consumers read their consumers' quotas only, viewers read all, neither
// writes; changes are audited and refusals counted.
func testQuotasOverHTTP(t *testing.T, newStore NewStore) {
	e := meteredEnv(t, newStore)
	main := e.CreatePool("main")
	for i := 1; i <= 3; i++ {
		e.AddProxy(main, api.CreateProxyRequest{Host: fmt.Sprintf("10.61.0.%d", i), Port: 80})
	}

	// A quota for a consumer that never leased creates it.
	var q api.Quota
	e.Admin("PUT", "/v1/quotas/consumer/scraper-1", api.QuotaLimits{MaxConcurrentLeases: 2}).Expect(t, 200).Decode(t, &q)
	if q.Subject != "consumer" || q.Name != "scraper-1" || q.MaxConcurrentLeases != 2 || q.RequestsPerMinute != 0 || q.BytesToday != 0 {
		t.Fatalf("set quota answered %+v", q)
	}
	for _, ref := range []string{"scraper-1", q.SubjectID.String()} {
		var again api.Quota
		e.Admin("GET", "/v1/quotas/consumer/"+ref, nil).Expect(t, 200).Decode(t, &again)
		if again.SubjectID != q.SubjectID || again.MaxConcurrentLeases != 2 {
			t.Fatalf("GET quota of %s = %+v", ref, again)
		}
	}

	// At the cap: 429, whichever way the request names the consumer.
	acquire := api.AcquireRequest{PoolName: "main", ConsumerName: "scraper-1"}
	a := e.Acquire(acquire)
	e.Acquire(acquire)
	wantDetail := `Consumer "scraper-1" is over its quota max_concurrent_leases=2; retry in 1s`
	for _, req := range []any{acquire, map[string]any{"pool_id": main.ID.String(), "consumer_id": "scraper-1"},
		map[string]any{"pool_name": "main", "consumer_id": q.SubjectID.String()}} {
		retry, body := e.expectRefused(t, ConsumerKey, req)
		if retry != 1 || body.Detail != wantDetail {
			t.Errorf("acquisition %v at the cap: Retry-After %d, detail %q; want 1 and %q", req, retry, body.Detail, wantDetail)
		}
		if want := (api.QuotaRefusal{Subject: "consumer", SubjectID: q.SubjectID, Name: "scraper-1",
			Limit: "max_concurrent_leases", Value: 2, RetryAfterSeconds: 1}); *body.Quota != want {
			t.Errorf("quota field %+v, want %+v", *body.Quota, want)
		}
	}
	e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: "scraper-2"}) // not limited
	// A wait waits the refusal out until a lease is released, and a wait
	// that runs out while refused is still 429 (not 409, not 503).
	released := make(chan struct{})
	go func() {
		defer close(released)
		time.Sleep(300 * time.Millisecond)
		e.Consumer("POST", releasePath(a.ID), nil)
	}()
	waitReq := acquire
	waitReq.WaitSeconds = 10
	e.Acquire(waitReq)
	<-released
	waitReq.WaitSeconds = 0.3
	if _, body := e.expectRefused(t, ConsumerKey, waitReq); body.Detail != wantDetail {
		t.Errorf("wait that ran out: detail %q", body.Detail)
	}

	// A pool's request rate: the detail names the pool.
	metered := e.CreatePool("metered")
	e.AddProxy(metered, api.CreateProxyRequest{Host: "10.61.1.1", Port: 80})
	e.Admin("PUT", "/v1/quotas/pool/metered", api.QuotaLimits{RequestsPerMinute: 2}).Expect(t, 200).Decode(t, &q)
	if q.Subject != "pool" || q.SubjectID != metered.ID || q.Name != "metered" {
		t.Fatalf("pool quota %+v", q)
	}
	for range 2 {
		l := e.Acquire(api.AcquireRequest{PoolID: metered.ID.String(), ConsumerName: "scraper-3"})
		e.Consumer("POST", releasePath(l.ID), nil).Expect(t, 200)
	}
	retry, body := e.expectRefused(t, ConsumerKey, api.AcquireRequest{PoolID: metered.ID.String(), ConsumerName: "scraper-3"})
	if retry > 60 || !strings.HasPrefix(body.Detail, `Pool "metered" is over its quota requests_per_minute=2; retry in `) ||
		body.Quota.Subject != "pool" || body.Quota.Limit != "requests_per_minute" {
		t.Errorf("over the pool's rate: Retry-After %d, body %+v", retry, body)
	}

	// Bytes per day: the report that crosses it refuses the next lease
	// until the UTC day ends.
	e.Admin("PUT", "/v1/quotas/consumer/scraper-4", api.QuotaLimits{BytesPerDay: 1000}).Expect(t, 200)
	l := e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: "scraper-4"})
	e.Consumer("POST", releasePath(l.ID), api.ReleaseRequest{Usage: &pharox.Usage{Requests: 1, BytesSent: 500, BytesReceived: 1000}}).Expect(t, 200)
	retry, body = e.expectRefused(t, ConsumerKey, api.AcquireRequest{PoolName: "main", ConsumerName: "scraper-4"})
	untilMidnight := time.Until(pharox.DayStart(time.Now()).AddDate(0, 0, 1))
	if body.Quota.Limit != "bytes_per_day" || body.Quota.Value != 1000 || retry < 1 ||
		time.Duration(retry)*time.Second > untilMidnight+5*time.Second {
		t.Errorf("over bytes_per_day: Retry-After %d (midnight in %v), body %+v", retry, untilMidnight, body)
	}
	e.Admin("GET", "/v1/quotas/consumer/scraper-4", nil).Expect(t, 200).Decode(t, &q)
	if q.BytesToday != 1500 || q.BytesThisMonth != 1500 {
		t.Errorf("counters after a 1500-byte release: %+v", q)
	}
	// Raising the limit keeps the counters and lets the consumer lease.
	e.Admin("PUT", "/v1/quotas/consumer/scraper-4", api.QuotaLimits{BytesPerDay: 1 << 30}).Expect(t, 200).Decode(t, &q)
	if q.BytesToday != 1500 {
		t.Errorf("a replaced quota lost its counters: %+v", q)
	}
	e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: "scraper-4"})

	// A proxy over its traffic allowance is not leased.
	solo := e.CreatePool("solo")
	px := e.AddProxy(solo, api.CreateProxyRequest{Host: "10.61.2.1", Port: 80})
	e.Admin("PUT", "/v1/quotas/proxy/"+px.ID.String(), api.QuotaLimits{BytesPerDay: 100}).Expect(t, 200).Decode(t, &q)
	if q.Name != "10.61.2.1:80" || q.ExhaustedUntil != nil {
		t.Fatalf("proxy quota %+v", q)
	}
	l = e.Acquire(api.AcquireRequest{PoolName: "solo"})
	e.Consumer("POST", releasePath(l.ID), api.ReleaseRequest{Usage: &pharox.Usage{BytesReceived: 200}}).Expect(t, 200)
	if r := e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolName: "solo"}).Expect(t, 409); r.Detail() != "No proxy available" {
		t.Errorf("only proxy over its allowance: detail %q", r.Detail())
	}
	e.Admin("GET", "/v1/quotas/proxy/"+px.ID.String(), nil).Expect(t, 200).Decode(t, &q)
	if q.ExhaustedUntil == nil || !q.ExhaustedUntil.Equal(pharox.DayStart(time.Now()).AddDate(0, 0, 1)) {
		t.Errorf("exhausted proxy quota %+v, want exhausted until midnight UTC", q)
	}

	// Bad requests: one sentence each, and nothing made for them.
	for _, c := range []struct {
		path string
		body any
		want int
		says string
	}{
		{"/v1/quotas/consumer/ghost", "{}", 422, "No limit set"},
		{"/v1/quotas/consumer/ghost", `{"max_concurrent_leases": -1}`, 422, "max_concurrent_leases"},
		{"/v1/quotas/consumer/ghost", `{"max_leases": 5}`, 422, `"max_leases"`},
		{"/v1/quotas/consumer/ghost", `{"bytes_per_day": "10GB"}`, 422, "bytes_per_day"},
		{"/v1/quotas/consumer/ghost", "", 422, "body"},
		{"/v1/quotas/team/ghost", `{"max_concurrent_leases": 1}`, 422, `"team"`},
		{"/v1/quotas/proxy/" + px.ID.String(), `{"max_concurrent_leases": 1}`, 422, "max_concurrency"},
		{"/v1/quotas/proxy/10.61.2.1", `{"bytes_per_day": 1}`, 422, "by id"},
		{"/v1/quotas/proxy/" + a.ID.String(), `{"bytes_per_day": 1}`, 404, "Proxy not found"},
		{"/v1/quotas/pool/nope", `{"bytes_per_day": 1}`, 404, "Pool not found"},
	} {
		r := e.Admin("PUT", c.path, c.body)
		if r.Status != c.want || !strings.Contains(r.Detail(), c.says) {
			t.Errorf("PUT %s %v: %d %q, want %d saying %q", c.path, c.body, r.Status, r.Detail(), c.want, c.says)
		}
	}
	var consumers []api.Consumer
	e.Admin("GET", "/v1/consumers/", nil).Expect(t, 200).Decode(t, &consumers)
	for _, c := range consumers {
		if c.Name == "ghost" {
			t.Fatal("a refused quota created its consumer")
		}
	}
	if r := e.Admin("GET", "/v1/quotas/consumer/scraper-2", nil).Expect(t, 404); r.Detail() != `No quota is set for consumer "scraper-2"` {
		t.Errorf("no quota: detail %q", r.Detail())
	}
	e.Admin("GET", "/v1/quotas/consumer/nobody", nil).Expect(t, 404)

	var list []api.Quota
	e.Admin("GET", "/v1/quotas/", nil).Expect(t, 200).Decode(t, &list)
	var order []string
	for _, q := range list {
		order = append(order, q.Subject+":"+q.Name)
	}
	if len(list) != 4 || list[0].Subject != "consumer" || list[1].Subject != "consumer" || list[2].Subject != "pool" || list[3].Subject != "proxy" {
		t.Fatalf("quotas listed as %v, want two consumers, then the pool, then the proxy", order)
	}

	// Who reads and writes: a key bound to scraper-1 reads its quota only,
	// a viewer reads all, neither writes, a bootstrap consumer key reads
	// none.
	k := e.CreateKey(api.CreateKeyRequest{Name: "s1", Role: "consumer", Consumers: []string{"scraper-1"}})
	e.Do("GET", "/v1/quotas/", k.Secret, nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 1 || list[0].Name != "scraper-1" {
		t.Fatalf("quotas a key bound to scraper-1 sees: %+v", list)
	}
	e.Do("GET", "/v1/quotas/consumer/scraper-1", k.Secret, nil).Expect(t, 200)
	for _, path := range []string{"/v1/quotas/consumer/scraper-4", "/v1/quotas/pool/metered", "/v1/quotas/proxy/" + px.ID.String()} {
		e.Do("GET", path, k.Secret, nil).Expect(t, 403)
	}
	if _, body := e.expectRefused(t, k.Secret, api.AcquireRequest{PoolName: "main"}); body.Detail != wantDetail {
		t.Errorf("key bound to scraper-1 at its cap: detail %q", body.Detail)
	}
	v := e.CreateKey(api.CreateKeyRequest{Name: "wall", Role: "viewer"})
	e.Do("GET", "/v1/quotas/", v.Secret, nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 4 {
		t.Fatalf("a viewer sees %d quotas, want 4", len(list))
	}
	e.Do("GET", "/v1/quotas/pool/metered", v.Secret, nil).Expect(t, 200)
	for _, key := range []string{v.Secret, k.Secret, ConsumerKey} {
		e.Do("PUT", "/v1/quotas/consumer/scraper-1", key, api.QuotaLimits{MaxConcurrentLeases: 9}).Expect(t, 403)
		e.Do("DELETE", "/v1/quotas/consumer/scraper-1", key, nil).Expect(t, 403)
	}
	e.Consumer("GET", "/v1/quotas/", nil).Expect(t, 403)

	// Deleting lifts the limit.
	e.Admin("DELETE", "/v1/quotas/consumer/scraper-1", nil).Expect(t, 204)
	e.Admin("DELETE", "/v1/quotas/consumer/scraper-1", nil).Expect(t, 404)
	e.Acquire(acquire)

	var audit []api.AuditEntry
	e.Admin("GET", "/v1/audit/?action=quota.set", nil).Expect(t, 200).Decode(t, &audit)
	if len(audit) != 5 {
		t.Errorf("%d quota.set entries, want 5: %+v", len(audit), audit)
	}
	found := false
	for _, a := range audit {
		found = found || (a.Detail == `set the quota of consumer "scraper-1": max_concurrent_leases=2` && a.Actor == "bootstrap" && a.TargetKind == "consumer")
	}
	if !found {
		t.Errorf("no audit entry says the scraper-1 quota was set: %+v", audit)
	}
	e.Admin("GET", "/v1/audit/?action=quota.delete", nil).Expect(t, 200).Decode(t, &audit)
	if len(audit) != 1 || audit[0].Detail != `deleted the quota of consumer "scraper-1"` {
		t.Errorf("quota.delete entries %+v", audit)
	}

	metrics := string(e.Admin("GET", "/metrics", nil).Expect(t, 200).Body)
	for _, want := range []string{
		`pharox_quota_refusals_total{limit="max_concurrent_leases",subject="consumer"} 5`,
		`pharox_quota_refusals_total{limit="requests_per_minute",subject="pool"} 1`,
		`pharox_quota_refusals_total{limit="bytes_per_day",subject="consumer"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
