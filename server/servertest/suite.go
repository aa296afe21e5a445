package servertest

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/server"
)

// wireTime is a timestamp as the Python clients expect it.
var wireTime = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+00:00$`)

// Run runs the whole suite; newStore returns a fresh, empty store for each
// subtest.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, newStore NewStore)
	}{
		{"Pools", testPools},
		{"Proxies", testProxies},
		{"LeaseContract", testLeaseContract},
		{"AcquireExtensions", testAcquireExtensions},
		{"ConsumerByID", testConsumerByID},
		{"ListConsumers", testListConsumers},
		{"StickySession", testStickySession},
		{"WaitForProxy", testWaitForProxy},
		{"RenewAndOutcome", testRenewAndOutcome},
		{"ListLeasesAndStats", testListLeasesAndStats},
		{"Import", testImport},
		{"HealthCheck", testHealthCheck},
		{"BadInput", testBadInput},
		{"Auth", testAuth},
		{"Secrets", testSecrets},
		{"Reaper", testReaper},
		{"Routing", testRouting},
		{"OpenAPIRoutesServed", testOpenAPIRoutesServed},
		{"PythonSDKFlow", testPythonSDKFlow},
		{"ConsumerIDAsName", testConsumerIDAsName},
		{"UnknownIDs", testUnknownIDs},
		{"ReleaseEnded", testReleaseEnded},
		{"WaitLimit", testWaitLimit},
		{"OutcomeOnEndedLease", testOutcomeOnEndedLease},
		{"OneVerdictPerLease", testOneVerdictPerLease},
		{"FailureGuard", testFailureGuard},
		{"UnknownPoolsGrowNothing", testUnknownPoolsGrowNothing},
		{"ConsumersPerKey", testConsumersPerKey},
		{"Targets", testTargets},
		{"KeysLifecycle", testKeysLifecycle},
		{"ViewerKey", testViewerKey},
		{"TenantsOverHTTP", testTenantsOverHTTP},
		{"StoredKeyGrowsNothing", testStoredKeyGrowsNothing},
		{"KeysAcrossServers", testKeysAcrossServers},
		{"TenantsThroughGateway", testTenantsThroughGateway},
		{"UsageOverHTTP", testUsageOverHTTP},
		{"QuotasOverHTTP", testQuotasOverHTTP},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

func env(t *testing.T, newStore NewStore, configure func(*server.Options)) *Env {
	t.Helper()
	return NewEnv(t, newStore(t), configure)
}

func testPools(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	r := e.Admin("POST", "/v1/pools/", map[string]string{"name": "main", "description": "primary"}).Expect(t, 201)
	f := r.Fields(t)
	if f["name"] != "main" || f["description"] != "primary" {
		t.Fatalf("pool body %s", r.Body)
	}
	id, err := uuid.Parse(fmt.Sprint(f["id"]))
	if err != nil {
		t.Fatalf("pool id %v is not a UUID", f["id"])
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("content type %q", ct)
	}
	e.CreatePool("alpha")

	var list []api.Pool
	e.Admin("GET", "/v1/pools/", nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 2 || list[0].Name != "alpha" || list[1].Name != "main" {
		t.Fatalf("list %+v, want alpha and main by name", list)
	}

	var got api.Pool
	e.Admin("GET", "/v1/pools/"+id.String(), nil).Expect(t, 200).Decode(t, &got)
	if got.ID != id || got.Name != "main" {
		t.Fatalf("get %+v", got)
	}
	e.Admin("GET", "/v1/pools/main", nil).Expect(t, 200).Decode(t, &got)
	if got.ID != id {
		t.Fatalf("get by name: %+v", got)
	}
	if r := e.Admin("GET", "/v1/pools/"+uuid.NewString(), nil).Expect(t, 404); r.Detail() != "Pool not found" {
		t.Fatalf("unknown pool detail %q", r.Detail())
	}
	if r := e.Admin("POST", "/v1/pools/", api.CreatePoolRequest{Name: "main"}).Expect(t, 409); r.Detail() == "" {
		t.Fatal("duplicate pool: no detail")
	}
	if r := e.Admin("POST", "/v1/pools/", api.CreatePoolRequest{Name: "  "}).Expect(t, 422); !strings.Contains(r.Detail(), "name") {
		t.Fatalf("empty name detail %q", r.Detail())
	}

	// A pool with a leased proxy cannot go; once released it can.
	p := e.AddProxy(got, api.CreateProxyRequest{Host: "10.0.0.1", Port: 8080, Protocol: "http"})
	l := e.Acquire(api.AcquireRequest{PoolID: id.String()})
	if l.ProxyID != p.ID {
		t.Fatalf("leased %s, want %s", l.ProxyID, p.ID)
	}
	e.Admin("DELETE", "/v1/pools/"+id.String(), nil).Expect(t, 409)
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", "{}").Expect(t, 200)
	if r := e.Admin("DELETE", "/v1/pools/"+id.String(), nil).Expect(t, 204); len(r.Body) != 0 {
		t.Fatalf("204 with body %q", r.Body)
	}
	e.Admin("GET", "/v1/pools/"+id.String(), nil).Expect(t, 404)
	e.Admin("DELETE", "/v1/pools/"+id.String(), nil).Expect(t, 404)
	// The deleted pool's name is free again, and acquiring by the old id
	// must not lease from the new pool of the same name.
	fresh := e.CreatePool("main")
	e.AddProxy(fresh, api.CreateProxyRequest{Host: "10.0.0.2", Port: 8080})
	if r := e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolID: id.String()}).Expect(t, 404); r.Detail() != "Pool not found" {
		t.Fatalf("acquire from deleted pool: %q", r.Detail())
	}
}

func testProxies(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	other := e.CreatePool("other")
	base := "/v1/pools/" + pool.ID.String() + "/proxies/"

	lat, lon := -34.6, -58.4
	r := e.Admin("POST", base, map[string]any{
		"host": "1.1.1.1", "port": 8080, "protocol": "SOCKS5", "username": "u", "password": "hunter2",
		"country": "ar", "city": "Buenos Aires", "latitude": lat, "longitude": lon,
	}).Expect(t, 201)
	var p api.Proxy
	r.Decode(t, &p)
	if p.PoolID != pool.ID || p.Host != "1.1.1.1" || p.Port != 8080 || p.Protocol != "socks5" ||
		p.Status != "active" || p.Country != "AR" || p.Username != "u" || p.Latitude == nil || *p.Latitude != lat {
		t.Fatalf("proxy %s", r.Body)
	}
	if p.Password != "" || p.URL != "" || strings.Contains(string(r.Body), "hunter2") {
		t.Fatalf("create answer shows the password: %s", r.Body)
	}
	e.Admin("POST", base, map[string]any{"host": "1.1.1.1", "port": 8080, "protocol": "socks5", "username": "u"}).Expect(t, 409)
	e.Admin("POST", base, map[string]any{"host": "1.1.1.2", "port": 70000, "protocol": "http"}).Expect(t, 422)
	e.Admin("POST", base, map[string]any{"host": "1.1.1.2", "port": 80, "protocol": "ftp"}).Expect(t, 422)
	e.Admin("POST", "/v1/pools/"+uuid.NewString()+"/proxies/", map[string]any{"host": "1.1.1.2", "port": 80}).Expect(t, 404)

	var list []api.Proxy
	r = e.Admin("GET", base, nil).Expect(t, 200)
	r.Decode(t, &list)
	if len(list) != 1 || list[0].ID != p.ID || strings.Contains(string(r.Body), "hunter2") {
		t.Fatalf("list %s", r.Body)
	}
	e.Admin("GET", base+"?include_secrets=true", nil).Expect(t, 200).Decode(t, &list)
	if list[0].Password != "hunter2" || !strings.Contains(list[0].URL, "u:hunter2@1.1.1.1:8080") {
		t.Fatalf("include_secrets: %+v", list[0])
	}
	e.Admin("GET", base+"?include_secrets=maybe", nil).Expect(t, 422)
	e.Consumer("GET", base+"?include_secrets=true", nil).Expect(t, 403)

	item := base + p.ID.String()
	var up api.Proxy
	e.Admin("PATCH", item, map[string]string{"status": "banned"}).Expect(t, 200).Decode(t, &up)
	if up.Status != "banned" || up.ID != p.ID {
		t.Fatalf("patch: %+v", up)
	}
	e.Admin("PATCH", item, map[string]string{"status": "ACTIVE"}).Expect(t, 200).Decode(t, &up)
	if up.Status != "active" {
		t.Fatalf("patch upper-case: %+v", up)
	}
	e.Admin("PATCH", item, map[string]string{"status": "gone"}).Expect(t, 422)
	e.Admin("PATCH", item, map[string]string{}).Expect(t, 422)
	// The proxy exists, but not in that pool.
	e.Admin("PATCH", "/v1/pools/"+other.ID.String()+"/proxies/"+p.ID.String(), map[string]string{"status": "banned"}).Expect(t, 404)
	e.Admin("DELETE", "/v1/pools/"+other.ID.String()+"/proxies/"+p.ID.String(), nil).Expect(t, 404)
	e.Admin("PATCH", base+uuid.NewString(), map[string]string{"status": "banned"}).Expect(t, 404)

	var one api.Proxy
	e.Admin("GET", item, nil).Expect(t, 200).Decode(t, &one)
	if one.ID != p.ID || one.Password != "" {
		t.Fatalf("get proxy: %+v", one)
	}

	l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})
	e.Admin("DELETE", item, nil).Expect(t, 409)
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200)
	e.Admin("DELETE", item, nil).Expect(t, 204)
	e.Admin("DELETE", item, nil).Expect(t, 404)
	e.Admin("GET", base, nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 0 {
		t.Fatalf("after delete: %+v", list)
	}
}

func testLeaseContract(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	proxy := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.1.1.1", Port: 3128, Protocol: "http",
		Username: "alice", Password: "s3cr3t", MaxConcurrency: ptrutil.Ptr(1)})

	// The Python SDK's request, field for field.
	body := map[string]any{"pool_id": pool.ID.String(), "consumer_id": nil, "ttl_seconds": 300,
		"strategy": "first_available", "filters": map[string]any{}}
	delete(body, "consumer_id")
	r := e.Consumer("POST", "/v1/leases/", body).Expect(t, 201)
	f := r.Fields(t)
	for _, k := range []string{"id", "proxy_id", "consumer_id", "pool_id", "status", "acquired_at", "expires_at"} {
		if _, ok := f[k]; !ok {
			t.Fatalf("lease lacks %q: %s", k, r.Body)
		}
	}
	for _, k := range []string{"acquired_at", "expires_at"} {
		if s, _ := f[k].(string); !wireTime.MatchString(s) {
			t.Fatalf("%s %q is not ISO 8601 with +00:00", k, f[k])
		}
	}
	var l api.Lease
	r.Decode(t, &l)
	if l.Status != "active" || l.PoolID != pool.ID || l.ProxyID != proxy.ID || l.ConsumerID == uuid.Nil {
		t.Fatalf("lease %s", r.Body)
	}
	if ttl := l.ExpiresAt.Sub(l.AcquiredAt.Time); ttl < 299*time.Second || ttl > 301*time.Second {
		t.Fatalf("expires %v after acquisition, want 300s", ttl)
	}
	if l.Proxy == nil || l.Proxy.Password != "s3cr3t" || l.Proxy.URL != "http://alice:s3cr3t@10.1.1.1:3128" {
		t.Fatalf("acquired lease must carry the proxy with credentials: %s", r.Body)
	}

	// The only proxy is exclusive and taken: the exact 409 detail.
	r = e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pool.ID.String(), "ttl_seconds": 60}).Expect(t, 409)
	if r.Detail() != "No proxy available" {
		t.Fatalf("409 detail %q", r.Detail())
	}
	r = e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": uuid.NewString()}).Expect(t, 404)
	if r.Detail() != "Pool not found" {
		t.Fatalf("404 detail %q", r.Detail())
	}

	r = e.Consumer("GET", "/v1/leases/"+l.ID.String(), nil).Expect(t, 200)
	var got api.Lease
	r.Decode(t, &got)
	if got.ID != l.ID || got.Status != "active" || strings.Contains(string(r.Body), "s3cr3t") {
		t.Fatalf("get lease %s", r.Body)
	}
	e.Consumer("GET", "/v1/leases/"+uuid.NewString(), nil).Expect(t, 404)

	r = e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", "{}").Expect(t, 200)
	f = r.Fields(t)
	if f["status"] != "released" || f["id"] != l.ID.String() {
		t.Fatalf("release %s", r.Body)
	}
	if s, _ := f["released_at"].(string); !wireTime.MatchString(s) {
		t.Fatalf("released_at %v", f["released_at"])
	}
	// Releasing again is a no-op that answers the released lease.
	if again := e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", "{}").Expect(t, 200).Fields(t); again["status"] != "released" {
		t.Fatalf("second release %v", again)
	}
	e.Consumer("POST", "/v1/leases/"+uuid.NewString()+"/release", "{}").Expect(t, 404)
	e.Consumer("GET", "/v1/leases/"+l.ID.String(), nil).Expect(t, 200).Decode(t, &got)
	if got.Status != "released" {
		t.Fatalf("after release: %+v", got)
	}

	// Filters and strategies.
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.1.1.2", Port: 3128, Country: "AR", Source: "oxylabs"})
	r = e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pool.ID.String(), "strategy": "least_used",
		"filters": map[string]any{"country": "ar", "source": "oxylabs"}}).Expect(t, 201)
	r.Decode(t, &l)
	if l.Proxy == nil || l.Proxy.Host != "10.1.1.2" {
		t.Fatalf("filtered lease: %s", r.Body)
	}
	e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pool.ID.String(),
		"filters": map[string]any{"country": "BR"}}).Expect(t, 409)
	e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pool.ID.String(), "strategy": "fastest"}).Expect(t, 422)
	r = e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pool.ID.String(),
		"filters": map[string]any{"continent": "SA"}}).Expect(t, 422)
	if !strings.Contains(r.Detail(), "continent") {
		t.Fatalf("unknown filter detail %q", r.Detail())
	}
}

func testAcquireExtensions(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.2.0.1", Port: 80})

	l := e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: "worker-1", TTLSeconds: ptrutil.Ptr(1.5)})
	if l.PoolID != pool.ID || l.PoolName != "main" || l.ConsumerName != "worker-1" {
		t.Fatalf("lease %+v", l)
	}
	if d := l.ExpiresAt.Sub(l.AcquiredAt.Time); d < 1400*time.Millisecond || d > 1600*time.Millisecond {
		t.Fatalf("fractional ttl gave %v", d)
	}
	var c api.Consumer
	e.Consumer("POST", "/v1/consumers/", api.CreateConsumerRequest{Name: "worker-1"}).Expect(t, 201).Decode(t, &c)
	if c.ID != l.ConsumerID || c.Name != "worker-1" {
		t.Fatalf("ensure consumer %+v, lease consumer %s", c, l.ConsumerID)
	}
	var again api.Consumer
	e.Consumer("POST", "/v1/consumers/", api.CreateConsumerRequest{Name: "worker-1"}).Expect(t, 201).Decode(t, &again)
	if again.ID != c.ID {
		t.Fatal("ensure consumer is not idempotent")
	}
	e.Consumer("POST", "/v1/consumers/", api.CreateConsumerRequest{Name: ""}).Expect(t, 422)

	// Both pool_id and pool_name: they must agree.
	e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolID: pool.ID.String(), PoolName: "other"}).Expect(t, 422)
	e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolName: "nope"}).Expect(t, 404)
	e.Consumer("POST", "/v1/leases/", api.AcquireRequest{}).Expect(t, 422)

	// Without a consumer the default one is used.
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200)
	d := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})
	if d.ConsumerName != "default" {
		t.Fatalf("default consumer: %+v", d)
	}
}

func testConsumerByID(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.3.0.1", Port: 80})
	var c api.Consumer
	e.Consumer("POST", "/v1/consumers/", api.CreateConsumerRequest{Name: "crawler"}).Expect(t, 201).Decode(t, &c)
	l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), ConsumerID: c.ID.String()})
	if l.ConsumerID != c.ID || l.ConsumerName != "crawler" {
		t.Fatalf("lease by consumer id: %+v", l)
	}
	// A consumer id the store does not know does not make a consumer with
	// that id (it is a name: see ConsumerIDAsName).
	made := uuid.NewString()
	var byMade api.Lease
	e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolID: pool.ID.String(), ConsumerID: made}).Expect(t, 201).Decode(t, &byMade)
	if byMade.ConsumerID.String() == made {
		t.Fatalf("an unknown consumer_id became a consumer's id: %+v", byMade)
	}

	// A consumer this server has never seen, ensured through another
	// server on the same store (another process, or before a restart).
	other := NewEnv(t, e.Store, nil)
	var far api.Consumer
	other.Consumer("POST", "/v1/consumers/", api.CreateConsumerRequest{Name: "far"}).Expect(t, 201).Decode(t, &far)
	l = e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), ConsumerID: far.ID.String()})
	if l.ConsumerID != far.ID || l.ConsumerName != "far" {
		t.Fatalf("lease by the id of a consumer ensured elsewhere (%s far): consumer %s %q", far.ID, l.ConsumerID, l.ConsumerName)
	}
}

func testListConsumers(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	var list []api.Consumer
	if r := e.Consumer("GET", "/v1/consumers/", nil).Expect(t, 200); strings.TrimSpace(string(r.Body)) != "[]" {
		t.Fatalf("empty store: consumers %s, want []", r.Body)
	}
	ids := map[string]uuid.UUID{}
	for _, name := range []string{"zeta", "alpha", "Mid"} {
		var c api.Consumer
		e.Consumer("POST", "/v1/consumers/", api.CreateConsumerRequest{Name: name}).Expect(t, 201).Decode(t, &c)
		ids[name] = c.ID
	}
	e.Admin("GET", "/v1/consumers/", nil).Expect(t, 200).Decode(t, &list)
	var names []string
	for _, c := range list {
		names = append(names, c.Name)
		if c.ID != ids[c.Name] {
			t.Fatalf("listed %q with id %s, ensured as %s", c.Name, c.ID, ids[c.Name])
		}
	}
	if strings.Join(names, ",") != "Mid,alpha,zeta" {
		t.Fatalf("consumers %q, want Mid, alpha, zeta (by name)", names)
	}
}

func testStickySession(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	for i := range 4 {
		e.AddProxy(pool, api.CreateProxyRequest{Host: fmt.Sprintf("10.4.0.%d", i+1), Port: 80})
	}
	first := e.Acquire(api.AcquireRequest{PoolName: "main", SessionKey: "cart-42", SessionTTLSeconds: ptrutil.Ptr(60.0), Strategy: "round_robin"})
	if first.SessionKey != "cart-42" {
		t.Fatalf("session key not echoed: %+v", first)
	}
	for range 3 {
		l := e.Acquire(api.AcquireRequest{PoolName: "main", SessionKey: "cart-42", Strategy: "round_robin"})
		if l.ProxyID != first.ProxyID {
			t.Fatalf("sticky session moved from %s to %s", first.ProxyID, l.ProxyID)
		}
	}
	e.Consumer("POST", "/v1/leases/", map[string]any{"pool_name": "main", "session_key": "k", "session_ttl_seconds": -1}).Expect(t, 422)
}

func testWaitForProxy(t *testing.T, newStore NewStore) {
	e := env(t, newStore, func(o *server.Options) { o.MaxWait = 5 * time.Second })
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.5.0.1", Port: 80, MaxConcurrency: ptrutil.Ptr(1)})
	held := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})

	// A waiting acquisition gets the proxy once the holder lets it go.
	var wg sync.WaitGroup
	var waited *Response
	wg.Go(func() {
		waited = e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pool.ID.String(), "wait_seconds": 5})
	})
	time.Sleep(100 * time.Millisecond)
	e.Consumer("POST", "/v1/leases/"+held.ID.String()+"/release", nil).Expect(t, 200)
	wg.Wait()
	waited.Expect(t, 201)

	// Nobody releases: the wait ends in the contract's 409. (Half a
	// second: a store slower than the wait, as FerretDB can be, has its
	// call cut by the wait's deadline and answers 503.)
	r := e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pool.ID.String(), "wait_seconds": 0.5}).Expect(t, 409)
	if r.Detail() != "No proxy available" {
		t.Fatalf("wait miss detail %q", r.Detail())
	}
	e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pool.ID.String(), "wait_seconds": -1}).Expect(t, 422)
}

func testRenewAndOutcome(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	proxy := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.6.0.1", Port: 80})
	l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), TTLSeconds: ptrutil.Ptr(30.0)})

	var renewed api.Lease
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/renew", api.RenewRequest{TTLSeconds: 600}).Expect(t, 200).Decode(t, &renewed)
	if d := renewed.ExpiresAt.Sub(l.AcquiredAt.Time); d < 590*time.Second {
		t.Fatalf("renewed lease expires %v after acquisition", d)
	}
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/renew", api.RenewRequest{TTLSeconds: 0}).Expect(t, 422)
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/renew", map[string]any{"ttl_seconds": 1e300}).Expect(t, 422)
	e.Consumer("POST", "/v1/leases/"+uuid.NewString()+"/renew", api.RenewRequest{TTLSeconds: 10}).Expect(t, 404)

	var p api.Proxy
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/outcome", api.OutcomeRequest{Kind: "success", LatencyMS: 120, StatusCode: 200}).
		Expect(t, 200).Decode(t, &p)
	if p.ID != proxy.ID || p.Status != "active" || p.LatencyMS != 120 {
		t.Fatalf("success outcome: %+v", p)
	}
	// The default policy makes a proxy inactive after three failures, one
	// per lease.
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/outcome", api.OutcomeRequest{Kind: "failure", Reason: "connection reset"}).
		Expect(t, 200).Decode(t, &p)
	for range 2 {
		other := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})
		e.Consumer("POST", "/v1/leases/"+other.ID.String()+"/outcome", api.OutcomeRequest{Kind: "failure", Reason: "connection reset"}).
			Expect(t, 200).Decode(t, &p)
	}
	if p.Status != "inactive" || p.LastError != "connection reset" {
		t.Fatalf("after three failures: %+v", p)
	}
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/outcome", api.OutcomeRequest{Kind: "meh"}).Expect(t, 422)
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/outcome", api.OutcomeRequest{Kind: "success", LatencyMS: -5}).Expect(t, 422)
	e.Consumer("POST", "/v1/leases/"+uuid.NewString()+"/outcome", api.OutcomeRequest{Kind: "success"}).Expect(t, 404)

	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200)
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/renew", api.RenewRequest{TTLSeconds: 10}).Expect(t, 409)
}

func testListLeasesAndStats(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	other := e.CreatePool("other")
	for i := range 3 {
		e.AddProxy(pool, api.CreateProxyRequest{Host: fmt.Sprintf("10.7.0.%d", i+1), Port: 80, MaxConcurrency: ptrutil.Ptr(1)})
	}
	e.AddProxy(other, api.CreateProxyRequest{Host: "10.7.1.1", Port: 80})
	a := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), ConsumerName: "a"})
	b := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), ConsumerName: "b"})
	e.Acquire(api.AcquireRequest{PoolID: other.ID.String(), ConsumerName: "a"})
	e.Consumer("POST", "/v1/leases/"+b.ID.String()+"/release", nil).Expect(t, 200)

	var list []api.Lease
	e.Admin("GET", "/v1/leases/?pool_id="+pool.ID.String(), nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 2 {
		t.Fatalf("pool leases: %d, want 2", len(list))
	}
	e.Admin("GET", "/v1/leases/?pool_id="+pool.ID.String()+"&status=active", nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 1 || list[0].ID != a.ID {
		t.Fatalf("active pool leases: %+v", list)
	}
	e.Admin("GET", "/v1/leases/?consumer_id="+a.ConsumerID.String(), nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 2 {
		t.Fatalf("consumer a leases: %d, want 2", len(list))
	}
	e.Admin("GET", "/v1/leases/?limit=1", nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 1 {
		t.Fatalf("limit 1 gave %d", len(list))
	}
	e.Admin("GET", "/v1/leases/", nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 3 {
		t.Fatalf("all leases: %d", len(list))
	}
	e.Admin("GET", "/v1/leases/?status=lost", nil).Expect(t, 422)
	e.Admin("GET", "/v1/leases/?limit=0", nil).Expect(t, 422)
	e.Admin("GET", "/v1/leases/?consumer_id=x", nil).Expect(t, 422)
	e.Consumer("GET", "/v1/leases/", nil).Expect(t, 403)

	var st api.PoolStats
	r := e.Consumer("GET", "/v1/pools/"+pool.ID.String()+"/stats", nil).Expect(t, 200)
	r.Decode(t, &st)
	if st.PoolName != "main" || st.TotalProxies != 3 || st.ActiveProxies != 3 || st.LeasedProxies != 1 ||
		st.AvailableProxies != 2 || st.TotalLeases != 1 || st.ByStatus["active"] != 3 || st.ByStatus["banned"] != 0 {
		t.Fatalf("stats %s", r.Body)
	}
	if s, _ := r.Fields(t)["collected_at"].(string); !wireTime.MatchString(s) {
		t.Fatalf("collected_at %q", s)
	}
	e.Consumer("GET", "/v1/pools/main/stats", nil).Expect(t, 200)
	e.Consumer("GET", "/v1/pools/"+uuid.NewString()+"/stats", nil).Expect(t, 404)
}

func testImport(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	path := "/v1/pools/" + pool.ID.String() + "/proxies/import"
	good := api.ImportProxiesRequest{Proxies: []api.CreateProxyRequest{
		{Host: "10.8.0.1", Port: 80}, {Host: "10.8.0.2", Port: 1080, Protocol: "socks5", Username: "u", Password: "pw-import"},
	}}
	// One bad proxy: nothing is stored, and the detail names it.
	bad := api.ImportProxiesRequest{Proxies: append(append([]api.CreateProxyRequest{}, good.Proxies...), api.CreateProxyRequest{Host: "10.8.0.3", Port: 0})}
	if r := e.Admin("POST", path, bad).Expect(t, 422); !strings.Contains(r.Detail(), "proxies[2]") {
		t.Fatalf("bad import detail %q", r.Detail())
	}
	var list []api.Proxy
	e.Admin("GET", "/v1/pools/"+pool.ID.String()+"/proxies/", nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 0 {
		t.Fatalf("a failed import stored %d proxies", len(list))
	}
	var res api.ImportProxiesResponse
	r := e.Admin("POST", path, good).Expect(t, 201)
	r.Decode(t, &res)
	if res.Created != 2 || len(res.Proxies) != 2 || strings.Contains(string(r.Body), "pw-import") {
		t.Fatalf("import: %s", r.Body)
	}
	// Importing the same again duplicates: nothing new.
	e.Admin("POST", path, good).Expect(t, 409)
	e.Admin("POST", path, api.ImportProxiesRequest{}).Expect(t, 422)
	e.Admin("POST", "/v1/pools/"+uuid.NewString()+"/proxies/import", good).Expect(t, 404)
	e.Admin("GET", "/v1/pools/"+pool.ID.String()+"/proxies/", nil).Expect(t, 200).Decode(t, &list)
	if len(list) != 2 {
		t.Fatalf("after imports: %d proxies", len(list))
	}
}

func testHealthCheck(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	e.Admin("POST", "/v1/pools/"+pool.ID.String()+"/health-check", nil).Expect(t, 501)

	var mu sync.Mutex
	var gotPool, gotTarget string
	e2 := env(t, newStore, func(o *server.Options) {
		o.Sweep = func(ctx context.Context, pool, target string) (api.SweepResult, error) {
			mu.Lock()
			defer mu.Unlock()
			gotPool, gotTarget = pool, target
			return api.SweepResult{Pool: pool, Checked: 2, ByStatus: map[string]int{"active": 2}}, nil
		}
	})
	p2 := e2.CreatePool("edge")
	var res api.SweepResult
	e2.Admin("POST", "/v1/pools/"+p2.ID.String()+"/health-check", map[string]string{"target_url": "https://example.test/ip"}).
		Expect(t, 200).Decode(t, &res)
	mu.Lock()
	if gotPool != "edge" || gotTarget != "https://example.test/ip" || res.Checked != 2 {
		t.Fatalf("sweep got pool %q target %q, answered %+v", gotPool, gotTarget, res)
	}
	mu.Unlock()
	e2.Admin("POST", "/v1/pools/"+p2.ID.String()+"/health-check", nil).Expect(t, 200)
	e2.Admin("POST", "/v1/pools/"+p2.ID.String()+"/health-check", map[string]string{"target_url": "ftp://x"}).Expect(t, 422)
	e2.Admin("POST", "/v1/pools/"+uuid.NewString()+"/health-check", nil).Expect(t, 404)
	e2.Consumer("POST", "/v1/pools/"+p2.ID.String()+"/health-check", nil).Expect(t, 403)

	// The periodic sweep visits every pool with the configured target.
	var swept []string
	e3 := env(t, newStore, func(o *server.Options) {
		o.Sweep = func(ctx context.Context, pool, target string) (api.SweepResult, error) {
			mu.Lock()
			defer mu.Unlock()
			swept = append(swept, pool+"|"+target)
			return api.SweepResult{Pool: pool}, nil
		}
	})
	e3.CreatePool("b")
	e3.CreatePool("a")
	e3.Server.SweepAll(context.Background())
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(swept, ",") != "a|,b|" {
		t.Fatalf("SweepAll swept %v, want pools a and b with the default target", swept)
	}
}

func testBadInput(t *testing.T, newStore NewStore) {
	e := env(t, newStore, func(o *server.Options) { o.MaxBodyBytes = 4096 })
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.9.0.1", Port: 80})
	pid := pool.ID.String()
	huge := `{"name": "` + strings.Repeat("x", 8192) + `"}`
	cases := []struct {
		name, method, path, body string
		status                   int
		detail                   string
	}{
		{"malformed json", "POST", "/v1/pools/", `{"name": `, 400, "Malformed JSON"},
		{"not json", "POST", "/v1/leases/", `pool_id=1`, 400, "Malformed JSON"},
		{"trailing data", "POST", "/v1/pools/", `{"name": "a"} {}`, 400, "Malformed JSON"},
		{"empty body", "POST", "/v1/pools/", ``, 422, "body is required"},
		{"array body", "POST", "/v1/pools/", `[1,2]`, 422, "object"},
		{"wrong type name", "POST", "/v1/pools/", `{"name": 5}`, 422, `"name"`},
		{"wrong type ttl", "POST", "/v1/leases/", `{"pool_id": "` + pid + `", "ttl_seconds": "300"}`, 422, "ttl_seconds"},
		{"negative ttl", "POST", "/v1/leases/", `{"pool_id": "` + pid + `", "ttl_seconds": -5}`, 422, "ttl_seconds"},
		{"zero ttl", "POST", "/v1/leases/", `{"pool_id": "` + pid + `", "ttl_seconds": 0}`, 422, "ttl_seconds"},
		{"tiny ttl", "POST", "/v1/leases/", `{"pool_id": "` + pid + `", "ttl_seconds": 1e-12}`, 422, "ttl_seconds"},
		{"huge ttl", "POST", "/v1/leases/", `{"pool_id": "` + pid + `", "ttl_seconds": 1e300}`, 422, "maximum"},
		{"ttl over a week", "POST", "/v1/leases/", `{"pool_id": "` + pid + `", "ttl_seconds": 700000}`, 422, "maximum"},
		{"bad pool uuid in body", "POST", "/v1/leases/", `{"pool_id": "not-a-uuid"}`, 422, "pool_id"},
		{"filters wrong type", "POST", "/v1/leases/", `{"pool_id": "` + pid + `", "filters": "AR"}`, 422, "filters"},
		{"bad filter radius", "POST", "/v1/leases/", `{"pool_id": "` + pid + `", "filters": {"radius_km": 5}}`, 422, "radius_km"},
		{"unknown pool", "POST", "/v1/leases/", `{"pool_id": "` + uuid.NewString() + `"}`, 404, "Pool not found"},
		{"bad lease uuid", "GET", "/v1/leases/xyz", ``, 404, "Lease not found"},
		{"bad lease uuid release", "POST", "/v1/leases/123/release", `{}`, 404, "Lease not found"},
		{"bad proxy uuid", "PATCH", "/v1/pools/" + pid + "/proxies/zzz", `{"status": "active"}`, 404, "Proxy not found"},
		{"unknown pool name", "GET", "/v1/pools/no-such-pool", ``, 404, "Pool not found"},
		{"oversized body", "POST", "/v1/pools/", huge, 413, "larger than"},
		{"release with bad body", "POST", "/v1/leases/" + uuid.NewString() + "/release", `{`, 400, "Malformed JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.Admin(c.method, c.path, c.body)
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %s", r.Status, c.status, r.Body)
			}
			if !strings.Contains(r.Detail(), c.detail) {
				t.Fatalf("detail %q does not mention %q", r.Detail(), c.detail)
			}
		})
	}
	// A larger body is fine for imports, which have their own limit.
	var imp api.ImportProxiesRequest
	for i := range 200 {
		imp.Proxies = append(imp.Proxies, api.CreateProxyRequest{Host: fmt.Sprintf("10.9.%d.%d", i/250, i%250+1), Port: 8080, Country: "AR"})
	}
	e.Admin("POST", "/v1/pools/"+pid+"/proxies/import", imp).Expect(t, 201)
}

func testAuth(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.10.0.1", Port: 80})
	cases := []struct {
		name, method, path, key string
		body                    any
		status                  int
	}{
		{"no key", "GET", "/v1/pools/", "", nil, 401},
		{"wrong key", "GET", "/v1/pools/", "wrong", nil, 401},
		{"admin key prefix", "GET", "/v1/pools/", AdminKey[:10], nil, 401},
		{"consumer creates pool", "POST", "/v1/pools/", ConsumerKey, api.CreatePoolRequest{Name: "x"}, 403},
		{"consumer deletes pool", "DELETE", "/v1/pools/" + pool.ID.String(), ConsumerKey, nil, 403},
		{"consumer adds proxy", "POST", "/v1/pools/" + pool.ID.String() + "/proxies/", ConsumerKey, api.CreateProxyRequest{Host: "h", Port: 1}, 403},
		{"consumer lists proxies", "GET", "/v1/pools/" + pool.ID.String() + "/proxies/", ConsumerKey, nil, 403},
		{"consumer reads pools", "GET", "/v1/pools/", ConsumerKey, nil, 200},
		{"consumer lists consumers", "GET", "/v1/consumers/", ConsumerKey, nil, 200},
		{"no key lists consumers", "GET", "/v1/consumers/", "", nil, 401},
		{"consumer reads stats", "GET", "/v1/pools/" + pool.ID.String() + "/stats", ConsumerKey, nil, 200},
		{"consumer acquires", "POST", "/v1/leases/", ConsumerKey, api.AcquireRequest{PoolName: "main"}, 201},
		{"admin acquires", "POST", "/v1/leases/", AdminKey, api.AcquireRequest{PoolName: "main"}, 201},
		{"no key acquires", "POST", "/v1/leases/", "", api.AcquireRequest{PoolName: "main"}, 401},
		{"healthz public", "GET", "/healthz", "", nil, 200},
		{"readyz public", "GET", "/readyz", "", nil, 200},
		{"openapi public", "GET", "/openapi.json", "", nil, 200},
		{"metrics need a key", "GET", "/metrics", "", nil, 401},
		{"consumer reads metrics", "GET", "/metrics", ConsumerKey, nil, 200},
		{"admin reads metrics", "GET", "/metrics", AdminKey, nil, 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.Do(c.method, c.path, c.key, c.body)
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %s", r.Status, c.status, r.Body)
			}
			if r.Status >= 400 && r.Detail() == "" {
				t.Fatalf("error without detail: %s", r.Body)
			}
		})
	}
	// Metrics can be served without a key when the operator asks.
	public := env(t, newStore, func(o *server.Options) { o.MetricsPublic = true })
	public.Do("GET", "/healthz", "", nil).Expect(t, 200)
	if r := public.Do("GET", "/metrics", "", nil).Expect(t, 200); !strings.Contains(string(r.Body), "pharox_http_requests_total") {
		t.Fatalf("metrics body lacks the request counter:\n%s", r.Body)
	}
}

func testSecrets(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	const password = "Pa55-w0rd-never-logged"
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.11.0.1", Port: 80, Username: "bob", Password: password})
	e.Admin("GET", "/v1/pools/"+pool.ID.String()+"/proxies/?include_secrets=true", nil).Expect(t, 200)
	l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), ConsumerName: "w"})
	if l.Proxy == nil || l.Proxy.Password != password {
		t.Fatal("acquire must hand out the password")
	}
	for _, path := range []string{"/v1/leases/" + l.ID.String(), "/v1/leases/?pool_id=" + pool.ID.String(),
		"/v1/pools/" + pool.ID.String() + "/proxies/", "/v1/pools/" + pool.ID.String() + "/proxies/" + l.ProxyID.String()} {
		if r := e.Admin("GET", path, nil).Expect(t, 200); strings.Contains(string(r.Body), password) {
			t.Fatalf("GET %s shows the password: %s", path, r.Body)
		}
	}
	if r := e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200); strings.Contains(string(r.Body), password) {
		t.Fatalf("release shows the password: %s", r.Body)
	}
	e.Do("GET", "/v1/pools/", "wrong-key-attempt", nil).Expect(t, 401)
	e.Admin("GET", "/v1/pools/?token=query-secret-xyz", nil).Expect(t, 200)
	logs := e.Logs.String()
	if !strings.Contains(logs, `"route":"/v1/leases/"`) {
		t.Fatalf("access log lacks the acquisition:\n%s", logs)
	}
	for _, secret := range []string{password, AdminKey, ConsumerKey, "wrong-key-attempt", "query-secret-xyz"} {
		if strings.Contains(logs, secret) {
			t.Fatalf("logs contain a secret %q:\n%s", secret, logs)
		}
	}
}

func testReaper(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.12.0.1", Port: 80, MaxConcurrency: ptrutil.Ptr(1)})
	l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), TTLSeconds: ptrutil.Ptr(0.05)})
	time.Sleep(100 * time.Millisecond)
	e.Server.Reap(context.Background())
	var got api.Lease
	e.Consumer("GET", "/v1/leases/"+l.ID.String(), nil).Expect(t, 200).Decode(t, &got)
	if got.Status != "expired" {
		t.Fatalf("after reaping, lease status %q", got.Status)
	}
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200).Decode(t, &got)
	if got.Status != "expired" {
		t.Fatalf("releasing a reaped lease answered status %q", got.Status)
	}
	e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})
}

func testRouting(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	r := e.Admin("GET", "/v1/nothing", nil).Expect(t, 404)
	if r.Detail() != "Not Found" {
		t.Fatalf("unknown route detail %q", r.Detail())
	}
	r = e.Admin("DELETE", "/v1/leases/", nil).Expect(t, 405)
	if r.Detail() != "Method Not Allowed" || !strings.Contains(r.Header.Get("Allow"), "POST") {
		t.Fatalf("405: %q allow %q", r.Detail(), r.Header.Get("Allow"))
	}
	// Collection paths without their slash redirect, keeping the method.
	r = e.Admin("POST", "/v1/pools", api.CreatePoolRequest{Name: "x"}).Expect(t, http.StatusTemporaryRedirect)
	if loc := r.Header.Get("Location"); loc != "/v1/pools/" {
		t.Fatalf("redirect to %q", loc)
	}
	// Item paths do not take a trailing slash.
	e.Admin("GET", "/v1/leases/"+uuid.NewString()+"/", nil).Expect(t, 404)
}

// testOpenAPIRoutesServed walks the served OpenAPI document and checks that
// every operation reaches a handler: no answer is the router's own 404 or
// 405.
func testOpenAPIRoutesServed(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	proxy := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.13.0.1", Port: 80})
	lease := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})
	var doc struct {
		OpenAPI string                               `json:"openapi"`
		Paths   map[string]map[string]map[string]any `json:"paths"`
	}
	e.Do("GET", "/openapi.json", "", nil).Expect(t, 200).Decode(t, &doc)
	if !strings.HasPrefix(doc.OpenAPI, "3.") || len(doc.Paths) < 15 {
		t.Fatalf("document: openapi %q with %d paths", doc.OpenAPI, len(doc.Paths))
	}
	ids := strings.NewReplacer("{pool_id}", pool.ID.String(), "{proxy_id}", proxy.ID.String(), "{lease_id}", lease.ID.String())
	n := 0
	for path, ops := range doc.Paths {
		for method := range ops {
			// Deletes last, so that they do not remove what others need.
			if method == "delete" {
				continue
			}
			checkServed(t, e, strings.ToUpper(method), ids.Replace(path))
			n++
		}
	}
	for path, ops := range doc.Paths {
		if _, ok := ops["delete"]; ok {
			checkServed(t, e, "DELETE", ids.Replace(path))
			n++
		}
	}
	if n < 20 {
		t.Fatalf("only %d operations in the document", n)
	}
}

func checkServed(t *testing.T, e *Env, method, path string) {
	t.Helper()
	r := e.Admin(method, path, "{}")
	if (r.Status == 404 && r.Detail() == "Not Found") || r.Status == 405 {
		t.Errorf("%s %s is in the document but not served: %d %s", method, path, r.Status, r.Body)
	}
	if r.Status >= 500 && r.Status != 501 {
		t.Errorf("%s %s: %d %s", method, path, r.Status, r.Body)
	}
}
