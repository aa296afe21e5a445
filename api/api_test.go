package api

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

func TestTimeUsesNumericOffset(t *testing.T) {
	ts := time.Date(2026, 1, 1, 0, 5, 0, 0, time.UTC)
	b, err := json.Marshal(NewTime(ts))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `"2026-01-01T00:05:00.000000+00:00"` {
		t.Fatalf("got %s", b)
	}
	var back Time
	if err := json.Unmarshal([]byte(`"2026-01-01T01:05:00+01:00"`), &back); err != nil {
		t.Fatal(err)
	}
	if !back.Equal(ts) {
		t.Fatalf("round trip: got %v want %v", back, ts)
	}
	if err := json.Unmarshal([]byte(`"yesterday"`), &back); err == nil {
		t.Fatal("accepted a non-ISO timestamp")
	}
	if err := json.Unmarshal([]byte(`12`), &back); err == nil {
		t.Fatal("accepted a non-ISO timestamp")
	}
}

func TestProxySecretsOnlyWhenAsked(t *testing.T) {
	p := &pharox.Proxy{
		ID: uuid.New(), Host: "10.0.0.1", Port: 8080, Protocol: pharox.ProtocolHTTP,
		Credentials: &pharox.Credentials{User: "u", Password: "s3cr3t-pw"}, Status: pharox.StatusActive,
	}
	plain, _ := json.Marshal(FromProxy(p, false))
	if strings.Contains(string(plain), "s3cr3t-pw") {
		t.Fatalf("password leaked without secrets: %s", plain)
	}
	if !strings.Contains(string(plain), `"username":"u"`) {
		t.Fatalf("username missing: %s", plain)
	}
	full, _ := json.Marshal(FromProxy(p, true))
	if !strings.Contains(string(full), `"password":"s3cr3t-pw"`) || !strings.Contains(string(full), "http://u:s3cr3t-pw@10.0.0.1:8080") {
		t.Fatalf("secrets missing when asked: %s", full)
	}
}

func TestCreateProxyRequestValidates(t *testing.T) {
	pool := uuid.New()
	r := CreateProxyRequest{Host: " [::1] ", Port: 1080, Protocol: "SOCKS5", Country: "ar", Username: "a", Password: "b"}
	p, err := r.ToProxy(pool)
	if err != nil {
		t.Fatal(err)
	}
	if p.Host != "::1" || p.Protocol != pharox.ProtocolSOCKS5 || p.Country != "AR" || p.Status != pharox.StatusActive || p.PoolID != pool {
		t.Fatalf("not normalized: %+v", p)
	}
	back := FromProxyModel(&p)
	if back.Password != "b" || back.Host != "::1" {
		t.Fatalf("inverse lost data: %+v", back)
	}
	for _, bad := range []CreateProxyRequest{
		{Host: "", Port: 80}, {Host: "h", Port: 0}, {Host: "h", Port: 70000},
		{Host: "h", Port: 80, Protocol: "ftp"}, {Host: "bad host", Port: 80},
	} {
		if _, err := bad.ToProxy(pool); err == nil {
			t.Errorf("%+v: accepted", bad)
		}
	}
}

func TestConversionsRoundTrip(t *testing.T) {
	checked := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	asn, maxc, lat, lon := 0, 2, -34.6, -58.4
	p := &pharox.Proxy{
		ID: uuid.New(), PoolID: uuid.New(), Host: "10.0.0.1", Port: 8080, Protocol: pharox.ProtocolHTTP,
		Credentials: &pharox.Credentials{User: "u", Password: "pw"}, Source: "s", Country: "AR", City: "BA",
		ISP: "i", ASN: &asn, Latitude: &lat, Longitude: &lon, Tags: []string{"a"}, Status: pharox.StatusSlow,
		MaxConcurrency: &maxc, CurrentLeases: 1, CheckedAt: &checked, LatencyMS: 12, LastError: "e",
		LastStatusCode: 200, FailureStreak: 3, StatusChangedAt: &checked, CreatedAt: checked,
	}
	wire := FromProxy(p, true)
	if got := wire.Model(); !reflect.DeepEqual(got, p) {
		t.Fatalf("proxy round trip:\n got %+v\nwant %+v", got, p)
	}
	if got := FromProxy(p, false); got.Model().Credentials.Password != "" {
		t.Fatal("a password appeared from a secret-free wire proxy")
	}
	l := &pharox.Lease{
		ID: uuid.New(), ProxyID: p.ID, ConsumerID: uuid.New(), ConsumerName: "c", PoolID: p.PoolID,
		PoolName: "main", Status: pharox.LeaseReleased, AcquiredAt: checked, ExpiresAt: checked.Add(time.Minute),
		ReleasedAt: &checked, SessionKey: "k", Proxy: p,
	}
	wl := FromLease(l, true)
	if got := wl.Model(); !reflect.DeepEqual(got, l) {
		t.Fatalf("lease round trip:\n got %+v\nwant %+v", got, l)
	}
	pool := &pharox.Pool{ID: uuid.New(), Name: "main", Description: "d", CreatedAt: checked}
	wp := FromPool(pool)
	if got := wp.Model(); !reflect.DeepEqual(got, pool) {
		t.Fatalf("pool round trip: %+v", got)
	}
	stats := &pharox.PoolStats{PoolName: "main", TotalProxies: 3, ActiveProxies: 2, AvailableProxies: 1,
		LeasedProxies: 1, TotalLeases: 2, CollectedAt: checked,
		ByStatus: map[pharox.ProxyStatus]int{pharox.StatusActive: 1, pharox.StatusSlow: 1, pharox.StatusInactive: 1, pharox.StatusBanned: 0}}
	ws := FromPoolStats(stats)
	if got := ws.Model(); !reflect.DeepEqual(got, stats) {
		t.Fatalf("stats round trip: %+v", got)
	}
	later := checked.Add(5 * time.Minute)
	st := &pharox.TargetState{ProxyID: p.ID, Target: "example.com", FailureStreak: 1, Bans: 2, CoolingUntil: &later,
		BannedAt: &checked, LastReason: "target answered 403", LastStatusCode: 403, LastSuccessAt: &checked,
		LastFailureAt: &checked, UpdatedAt: checked}
	wst := FromTargetState(st, checked)
	if got := wst.Model(); !reflect.DeepEqual(got, st) {
		t.Fatalf("target state round trip:\n got %+v\nwant %+v", got, st)
	}
	if !wst.Cooling || FromTargetState(st, later).Cooling {
		t.Fatal("cooling is not read at the given time")
	}
	ts := &pharox.TargetStats{Target: "example.com", UsableProxies: 3, CoolingProxies: 1, BansLastHour: 1}
	wts := FromTargetStats(ts)
	if got := wts.Model(); !reflect.DeepEqual(got, ts) {
		t.Fatalf("target stats round trip: %+v", got)
	}
}

func TestUsageConversionsRoundTrip(t *testing.T) {
	at := time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
	l := &pharox.Lease{ID: uuid.New(), ProxyID: uuid.New(), ConsumerID: uuid.New(), PoolID: uuid.New(),
		Status: pharox.LeaseReleased, AcquiredAt: at, ExpiresAt: at.Add(time.Minute), ReleasedAt: &at,
		Target: "example.com", Usage: &pharox.Usage{Requests: 3, BytesSent: 10, BytesReceived: 20}}
	wl := FromLease(l, false)
	if got := wl.Model(); !reflect.DeepEqual(got, l) {
		t.Fatalf("lease with usage round trip:\n got %+v\nwant %+v", got, l)
	}
	wl.Usage.Requests = 99
	if l.Usage.Requests != 3 {
		t.Fatal("the wire lease shares its usage with the model")
	}

	q := &pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: uuid.New(), Name: "10.0.0.1:80", UpdatedAt: at,
		Day: pharox.DayStart(at), BytesToday: 150, Month: pharox.MonthStart(at), BytesThisMonth: 150}
	q.QuotaLimits = pharox.QuotaLimits{BytesPerDay: 100, BytesPerMonth: 1000}
	wq := FromQuota(q, at)
	if got := wq.Model(); !reflect.DeepEqual(got, q) {
		t.Fatalf("quota round trip:\n got %+v\nwant %+v", got, q)
	}
	if wq.ExhaustedUntil == nil || !wq.ExhaustedUntil.Equal(pharox.DayStart(at).AddDate(0, 0, 1)) {
		t.Fatalf("a proxy over its daily allowance: exhausted_until %v, want the next midnight", wq.ExhaustedUntil)
	}
	if FromQuota(q, at.AddDate(0, 0, 1)).ExhaustedUntil != nil {
		t.Fatal("the allowance is still used up the next day")
	}
	consumer := *q
	consumer.Subject = pharox.QuotaConsumer
	if FromQuota(&consumer, at).ExhaustedUntil != nil {
		t.Fatal("a consumer's quota says exhausted_until: only proxies are skipped until then")
	}

	r := pharox.UsageRow{Key: "k", Name: "n", Leases: 2, Usage: pharox.Usage{Requests: 1, BytesSent: 2, BytesReceived: 3}}
	wr := FromUsageRow(r)
	if got := wr.Model(); got != r {
		t.Fatalf("usage row round trip: %+v", got)
	}

	qe := &pharox.QuotaError{Subject: pharox.QuotaPool, SubjectID: uuid.New(), Name: "main",
		Limit: pharox.LimitRequestsPerMinute, Value: 60, RetryAfter: 1500 * time.Millisecond}
	wqe := FromQuotaError(qe)
	if wqe.RetryAfterSeconds != 2 {
		t.Fatalf("retry after 1.5s on the wire = %ds, want 2 (rounded up)", wqe.RetryAfterSeconds)
	}
	want := *qe
	want.RetryAfter = 2 * time.Second
	if got := wqe.Model(0); *got != want {
		t.Fatalf("refusal round trip: %+v", got)
	}
	if got := wqe.Model(5 * time.Second); got.RetryAfter != 5*time.Second {
		t.Fatalf("the header's Retry-After does not win: %v", got.RetryAfter)
	}
	for d, want := range map[time.Duration]int64{0: 1, time.Millisecond: 1, time.Second: 1, 1001 * time.Millisecond: 2, time.Hour: 3600} {
		if got := RetryAfterSeconds(d); got != want {
			t.Errorf("RetryAfterSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}
