package servertest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/observe"
	"github.com/pharox/pharox/server"
)

// Keys kept in the store: created, rotated and revoked through the API,
// with roles (admin, consumer, viewer) and, for consumer keys, scopes. A
// consumer key bound to consumers and pools acts only as them, only on
// their leases, only from its pools.

// propagation is how long a key created or revoked through one server may
// take to work or stop on another sharing the store.
const propagation = 5 * time.Second

// NewStorePair returns two handles on one fresh, empty store (two
// connections to one database, or the same handle twice), as two serve
// processes sharing a store would have.
type NewStorePair func(t *testing.T) (pharox.Storage, pharox.Storage)

// CreateKey creates a stored key with the admin key and returns it with
// its secret.
func (e *Env) CreateKey(req api.CreateKeyRequest) api.CreatedKey {
	e.T.Helper()
	var k api.CreatedKey
	e.Admin("POST", "/v1/keys/", req).Expect(e.T, 201).Decode(e.T, &k)
	if !strings.HasPrefix(k.Secret, "phx_") || k.Hint == "" || !strings.HasPrefix(k.Secret, k.Hint) {
		e.T.Fatalf("created key %+v: secret and hint malformed", k.APIKey)
	}
	return k
}

// waitStatus repeats a GET with key until it answers status, failing the
// test when it has not within propagation.
func waitStatus(t *testing.T, e *Env, path, key string, status int) {
	t.Helper()
	deadline := time.Now().Add(propagation)
	for {
		r := e.Do("GET", path, key, nil)
		if r.Status == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s still answers %d (%s) %v after the change, want %d", path, r.Status, r.Detail(), propagation, status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testKeysLifecycle: keys are created (the secret shown once), listed and
// read without secrets, rotated (the old secret stops at once) and revoked
// (401 with a sentence), and every change is in the audit log.
func testKeysLifecycle(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	e.CreatePool("main")
	k := e.CreateKey(api.CreateKeyRequest{Name: "scraper", Role: "consumer", Consumers: []string{"scraper-1"}, Pools: []string{"main"}})
	if k.Role != "consumer" || len(k.Consumers) != 1 || k.Pools[0] != "main" || k.CreatedAt.IsZero() {
		t.Fatalf("created key %+v", k.APIKey)
	}
	e.Do("GET", "/v1/pools/", k.Secret, nil).Expect(t, 200)

	var self api.KeySelf
	e.Do("GET", "/v1/keys/self", k.Secret, nil).Expect(t, 200).Decode(t, &self)
	if self.Name != "scraper" || self.Role != "consumer" || !self.Scoped || self.Bootstrap || self.ID == nil || *self.ID != k.ID ||
		len(self.Consumers) != 1 || self.Consumers[0] != "scraper-1" || !self.ManagesKeys {
		t.Fatalf("self of a stored consumer key: %+v", self)
	}
	self = api.KeySelf{}
	e.Admin("GET", "/v1/keys/self", nil).Expect(t, 200).Decode(t, &self)
	if self.Name != "bootstrap" || self.Role != "admin" || !self.Bootstrap || self.ID != nil {
		t.Fatalf("self of a bootstrap admin key: %+v", self)
	}

	for _, path := range []string{"/v1/keys/", "/v1/keys/" + k.ID.String(), "/v1/keys/scraper"} {
		r := e.Admin("GET", path, nil).Expect(t, 200)
		if strings.Contains(string(r.Body), k.Secret) || strings.Contains(string(r.Body), "secret") || strings.Contains(string(r.Body), "digest") {
			t.Fatalf("GET %s shows the secret or its digest: %s", path, r.Body)
		}
	}
	e.Admin("POST", "/v1/keys/", api.CreateKeyRequest{Name: "scraper", Role: "viewer"}).Expect(t, 409)
	for _, bad := range []api.CreateKeyRequest{
		{Name: "x", Role: "root"},
		{Name: "", Role: "viewer"},
		{Name: "x", Role: "viewer", Consumers: []string{"c"}},
		{Name: "x", Role: "consumer", ExpiresInSeconds: ptrutil.Ptr(-1.0)},
		{Name: "x", Role: "consumer", ExpiresAt: &api.Time{Time: time.Now().Add(-time.Hour)}},
	} {
		if r := e.Admin("POST", "/v1/keys/", bad); r.Status != 422 || r.Detail() == "" {
			t.Errorf("create key %+v: %d %s, want 422 with a detail", bad, r.Status, r.Body)
		}
	}
	if r := e.Admin("GET", "/v1/keys/nobody", nil).Expect(t, 404); !strings.Contains(r.Detail(), `"nobody"`) {
		t.Errorf("unknown key: detail %q does not name it", r.Detail())
	}
	if r := e.Do("POST", "/v1/keys/", k.Secret, api.CreateKeyRequest{Name: "y", Role: "admin"}).Expect(t, 403); !strings.Contains(r.Detail(), "scraper") {
		t.Errorf("consumer key creating a key: detail %q does not name the key", r.Detail())
	}

	// Rotation: the old secret stops at once on this server, the new works.
	var rotated api.CreatedKey
	e.Admin("POST", "/v1/keys/"+k.ID.String()+"/rotate", nil).Expect(t, 200).Decode(t, &rotated)
	if rotated.Secret == k.Secret || rotated.ID != k.ID {
		t.Fatalf("rotation gave %+v", rotated.APIKey)
	}
	e.Do("GET", "/v1/pools/", k.Secret, nil).Expect(t, 401)
	e.Do("GET", "/v1/pools/", rotated.Secret, nil).Expect(t, 200)

	// Revocation.
	var revoked api.APIKey
	e.Admin("DELETE", "/v1/keys/scraper", nil).Expect(t, 200).Decode(t, &revoked)
	if revoked.RevokedAt == nil {
		t.Fatalf("revoked key %+v has no revoked_at", revoked)
	}
	if r := e.Do("GET", "/v1/pools/", rotated.Secret, nil).Expect(t, 401); !strings.Contains(r.Detail(), "revoked") {
		t.Errorf("revoked key: detail %q", r.Detail())
	}
	e.Admin("POST", "/v1/keys/scraper/rotate", nil).Expect(t, 409)
	e.Admin("DELETE", "/v1/keys/scraper", nil).Expect(t, 200)

	// Expiry.
	short := e.CreateKey(api.CreateKeyRequest{Name: "short", Role: "viewer", ExpiresInSeconds: ptrutil.Ptr(0.2)})
	time.Sleep(300 * time.Millisecond)
	if r := e.Do("GET", "/v1/pools/", short.Secret, nil).Expect(t, 401); !strings.Contains(r.Detail(), "expired") {
		t.Errorf("expired key: detail %q", r.Detail())
	}

	var audit []api.AuditEntry
	e.Admin("GET", "/v1/audit/?actor=bootstrap", nil).Expect(t, 200).Decode(t, &audit)
	actions := map[string]int{}
	for _, a := range audit {
		actions[a.Action]++
		if strings.Contains(a.Detail, k.Secret) || strings.Contains(a.Detail, rotated.Secret) {
			t.Fatalf("audit entry shows a secret: %+v", a)
		}
	}
	if actions["pool.create"] != 1 || actions["key.create"] != 2 || actions["key.rotate"] != 1 || actions["key.revoke"] != 1 {
		t.Fatalf("audit actions %v; want one pool.create, two key.create, one key.rotate, one key.revoke", actions)
	}
	e.Admin("GET", "/v1/audit/?action=key.revoke&limit=1", nil).Expect(t, 200).Decode(t, &audit)
	if len(audit) != 1 || audit[0].TargetID != k.ID.String() {
		t.Fatalf("audit of key.revoke: %+v", audit)
	}
	e.Admin("GET", "/v1/audit/?since=yesterday", nil).Expect(t, 422)
	if strings.Contains(e.Logs.String(), k.Secret) || strings.Contains(e.Logs.String(), rotated.Secret) {
		t.Fatal("a secret went to the log")
	}
}

// testViewerKey: a viewer key reads everything but keys and the audit log,
// never proxy passwords, and writes nothing.
func testViewerKey(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	proxy := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.40.0.1", Port: 80, Password: "pw"})
	l := e.Acquire(api.AcquireRequest{PoolName: "main"})
	v := e.CreateKey(api.CreateKeyRequest{Name: "wall", Role: "viewer"})
	p := "/v1/pools/" + pool.ID.String()
	for _, path := range []string{"/v1/pools/", p, p + "/stats", p + "/proxies/", p + "/proxies/" + proxy.ID.String(),
		"/v1/consumers/", "/v1/leases/", "/v1/leases/" + l.ID.String(), "/v1/admin/dashboard", "/metrics", "/v1/keys/self"} {
		e.Do("GET", path, v.Secret, nil).Expect(t, 200)
	}
	for _, path := range []string{p + "/proxies/?include_secrets=true", "/v1/keys/", "/v1/audit/", "/v1/keys/wall"} {
		e.Do("GET", path, v.Secret, nil).Expect(t, 403)
	}
	for _, w := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/v1/pools/", api.CreatePoolRequest{Name: "x"}},
		{"DELETE", p, nil},
		{"PATCH", p + "/proxies/" + proxy.ID.String(), api.UpdateProxyRequest{Status: "banned"}},
		{"POST", "/v1/leases/", api.AcquireRequest{PoolName: "main"}},
		{"POST", "/v1/leases/" + l.ID.String() + "/release", nil},
		{"POST", "/v1/consumers/", api.CreateConsumerRequest{Name: "c"}},
		{"POST", "/v1/keys/", api.CreateKeyRequest{Name: "y", Role: "admin"}},
	} {
		r := e.Do(w.method, w.path, v.Secret, w.body)
		if r.Status != 403 || !strings.Contains(r.Detail(), "viewer") {
			t.Errorf("viewer %s %s: %d %q, want 403 naming the role", w.method, w.path, r.Status, r.Detail())
		}
	}
}

// tenants is two stored consumer keys bound to different consumers and
// pools, over one server.
type tenants struct {
	e            *Env
	poolA, poolB api.Pool
	a, b         api.CreatedKey
}

func newTenants(t *testing.T, e *Env) *tenants {
	t.Helper()
	tn := &tenants{e: e, poolA: e.CreatePool("pool-a"), poolB: e.CreatePool("pool-b")}
	e.AddProxy(tn.poolA, api.CreateProxyRequest{Host: "10.50.0.1", Port: 80, MaxConcurrency: ptrutil.Ptr(10)})
	e.AddProxy(tn.poolB, api.CreateProxyRequest{Host: "10.50.0.2", Port: 80, MaxConcurrency: ptrutil.Ptr(10)})
	tn.a = e.CreateKey(api.CreateKeyRequest{Name: "tenant-a", Role: "consumer", Consumers: []string{"team-a", "team-a-batch"}, Pools: []string{"pool-a"}})
	tn.b = e.CreateKey(api.CreateKeyRequest{Name: "tenant-b", Role: "consumer", Consumers: []string{"team-b"}, Pools: []string{"pool-b"}})
	return tn
}

func (tn *tenants) acquire(key string, req api.AcquireRequest) api.Lease {
	tn.e.T.Helper()
	var l api.Lease
	tn.e.Do("POST", "/v1/leases/", key, req).Expect(tn.e.T, 201).Decode(tn.e.T, &l)
	return l
}

// testTenantsOverHTTP: two consumer keys bound to different consumers and
// pools each see and touch only their own leases and pools. A key renewing
// (to 24 h) and releasing another key's lease used to succeed; now every
// such request is 404, as for a lease that does not exist.
func testTenantsOverHTTP(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	tn := newTenants(t, e)
	la := tn.acquire(tn.a.Secret, api.AcquireRequest{PoolName: "pool-a"})
	if la.ConsumerName != "team-a" {
		t.Fatalf("a key's acquisition naming no consumer went to %q, want its first consumer team-a", la.ConsumerName)
	}
	la2 := tn.acquire(tn.a.Secret, api.AcquireRequest{PoolID: tn.poolA.ID.String(), ConsumerName: "team-a-batch"})
	lb := tn.acquire(tn.b.Secret, api.AcquireRequest{PoolName: "pool-b"})

	// Scopes: other pools and other consumers are 403, naming what the key may use.
	for _, req := range []api.AcquireRequest{{PoolName: "pool-b"}, {PoolID: tn.poolB.ID.String()}, {PoolName: "no-such-pool"}} {
		r := e.Do("POST", "/v1/leases/", tn.a.Secret, req).Expect(t, 403)
		if !strings.Contains(r.Detail(), `"pool-a"`) {
			t.Errorf("acquisition outside the key's pools: detail %q does not name pool-a", r.Detail())
		}
	}
	for _, req := range []api.AcquireRequest{{PoolName: "pool-a", ConsumerName: "team-b"}, {PoolName: "pool-a", ConsumerID: lb.ConsumerID.String()},
		{PoolName: "pool-a", ConsumerName: "default"}} {
		r := e.Do("POST", "/v1/leases/", tn.a.Secret, req).Expect(t, 403)
		if !strings.Contains(r.Detail(), `"team-a" or "team-a-batch"`) {
			t.Errorf("acquisition as another consumer: detail %q does not name the key's consumers", r.Detail())
		}
	}
	e.Do("POST", "/v1/consumers/", tn.a.Secret, api.CreateConsumerRequest{Name: "team-b"}).Expect(t, 403)
	e.Do("POST", "/v1/consumers/", tn.a.Secret, api.CreateConsumerRequest{Name: "team-a"}).Expect(t, 201)

	// Another key's lease is 404 for every lease route: no probing.
	other := "/v1/leases/" + lb.ID.String()
	for _, w := range []struct {
		method, path string
		body         any
	}{
		{"GET", other, nil},
		{"POST", other + "/renew", api.RenewRequest{TTLSeconds: 86400}},
		{"POST", other + "/release", nil},
		{"POST", other + "/outcome", api.OutcomeRequest{Kind: "banned"}},
	} {
		r := e.Do(w.method, w.path, tn.a.Secret, w.body).Expect(t, 404)
		if r.Detail() != "Lease not found" {
			t.Errorf("%s %s with another key: detail %q, want the unknown lease's", w.method, w.path, r.Detail())
		}
	}
	var got api.Lease
	e.Do("GET", other, tn.b.Secret, nil).Expect(t, 200).Decode(t, &got)
	if got.Status != "active" || got.ExpiresAt.Sub(lb.ExpiresAt.Time) > time.Second {
		t.Fatalf("after the other key's attempts the lease is %s expiring %v (was %v)", got.Status, got.ExpiresAt, lb.ExpiresAt)
	}

	// Listings show only the key's own.
	var leases []api.Lease
	e.Do("GET", "/v1/leases/", tn.a.Secret, nil).Expect(t, 200).Decode(t, &leases)
	if len(leases) != 2 || leases[0].ID != la.ID || leases[1].ID != la2.ID {
		t.Fatalf("key a lists leases %+v, want its two", leases)
	}
	e.Do("GET", "/v1/leases/?consumer_id="+lb.ConsumerID.String(), tn.a.Secret, nil).Expect(t, 200).Decode(t, &leases)
	if len(leases) != 0 {
		t.Fatalf("key a lists the other consumer's leases: %+v", leases)
	}
	e.Do("GET", "/v1/leases/?limit=1", tn.a.Secret, nil).Expect(t, 200).Decode(t, &leases)
	if len(leases) != 1 || leases[0].ID != la.ID {
		t.Fatalf("key a lists with limit 1: %+v", leases)
	}
	var consumers []api.Consumer
	e.Do("GET", "/v1/consumers/", tn.b.Secret, nil).Expect(t, 200).Decode(t, &consumers)
	if len(consumers) != 1 || consumers[0].Name != "team-b" {
		t.Fatalf("key b lists consumers %+v, want team-b only", consumers)
	}
	var pools []api.Pool
	e.Do("GET", "/v1/pools/", tn.b.Secret, nil).Expect(t, 200).Decode(t, &pools)
	if len(pools) != 1 || pools[0].Name != "pool-b" {
		t.Fatalf("key b lists pools %+v, want pool-b only", pools)
	}
	e.Do("GET", "/v1/pools/"+tn.poolA.ID.String(), tn.b.Secret, nil).Expect(t, 404)
	e.Do("GET", "/v1/pools/pool-a/stats", tn.b.Secret, nil).Expect(t, 404)
	e.Do("GET", "/v1/pools/pool-b/stats", tn.b.Secret, nil).Expect(t, 200)

	// Each key does everything on its own leases.
	e.Do("POST", other+"/renew", tn.b.Secret, api.RenewRequest{TTLSeconds: 120}).Expect(t, 200)
	e.Do("POST", other+"/outcome", tn.b.Secret, api.OutcomeRequest{Kind: "success"}).Expect(t, 200)
	e.Do("POST", other+"/release", tn.b.Secret, nil).Expect(t, 200)

	// The second reproduction, with stored keys: replayed bans on
	// the released lease change nothing.
	for range 4 {
		e.Do("POST", other+"/outcome", tn.b.Secret, api.OutcomeRequest{Kind: "banned"}).Expect(t, 409)
	}
	var proxies []api.Proxy
	e.Admin("GET", "/v1/pools/pool-b/proxies/", nil).Expect(t, 200).Decode(t, &proxies)
	if proxies[0].Status != "active" || proxies[0].FailureStreak != 0 {
		t.Fatalf("after replayed bans on an ended lease the proxy is %s with streak %d", proxies[0].Status, proxies[0].FailureStreak)
	}

	// An admin releasing a consumer's lease is audited.
	e.Admin("POST", "/v1/leases/"+la2.ID.String()+"/release", nil).Expect(t, 200)
	var audit []api.AuditEntry
	e.Admin("GET", "/v1/audit/?action=lease.release", nil).Expect(t, 200).Decode(t, &audit)
	if len(audit) != 1 || audit[0].TargetID != la2.ID.String() || audit[0].Actor != "bootstrap" || !strings.Contains(audit[0].Detail, "team-a-batch") {
		t.Fatalf("audit of an admin's release: %+v", audit)
	}
	// A key releasing its own lease is not an admin action.
	e.Do("POST", "/v1/leases/"+la.ID.String()+"/release", tn.a.Secret, nil).Expect(t, 200)
	e.Admin("GET", "/v1/audit/?action=lease.release", nil).Expect(t, 200).Decode(t, &audit)
	if len(audit) != 1 {
		t.Fatalf("a key's release of its own lease was audited: %+v", audit)
	}
}

// testStoredKeyGrowsNothing: the third reproduction with a stored
// consumer key: 100 acquisitions from unknown pools with made-up consumer
// names add no consumer and no metric series.
func testStoredKeyGrowsNothing(t *testing.T, newStore NewStore) {
	reg := prometheus.NewRegistry()
	rec, err := observe.NewPrometheus(reg, observe.PrometheusOptions{ConsumerLabels: true})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, newStore(t), rec.ManagerOptions(), func(o *server.Options) { o.Registerer, o.Gatherer = reg, reg })
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.51.0.1", Port: 80})
	unbound := e.CreateKey(api.CreateKeyRequest{Name: "unbound", Role: "consumer"})
	l := e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: "known"})
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200)
	// Warm-ups add the routes' own request series, once.
	e.Do("POST", "/v1/leases/", unbound.Secret, api.AcquireRequest{PoolName: "warm-up", ConsumerName: "warm-up"}).Expect(t, 404)
	e.Do("POST", "/v1/leases/", unbound.Secret, api.AcquireRequest{PoolName: "main", ConsumerName: "warm-up"}).Expect(t, 403)
	series, consumers := seriesCount(t, reg), consumerCount(t, e)
	for i := range 100 {
		req := api.AcquireRequest{PoolName: fmt.Sprintf("no-such-pool-%d", i), ConsumerName: fmt.Sprintf("made-up-%d", i)}
		if i%2 == 1 {
			req = api.AcquireRequest{PoolName: "main", ConsumerID: fmt.Sprintf("made-up-%d", i)}
		}
		if r := e.Do("POST", "/v1/leases/", unbound.Secret, req); r.Status != 404 && r.Status != 403 {
			t.Fatalf("acquisition %+v: %d %s", req, r.Status, r.Body)
		}
	}
	if n := consumerCount(t, e); n != consumers {
		t.Errorf("100 acquisitions from unknown pools or as made-up consumers made %d consumers", n-consumers)
	}
	if n := seriesCount(t, reg); n != series {
		t.Errorf("100 acquisitions from unknown pools or as made-up consumers added %d metric series", n-series)
	}
	// A key bound to no consumer acts as a consumer named like it.
	var lease api.Lease
	e.Do("POST", "/v1/leases/", unbound.Secret, api.AcquireRequest{PoolName: "main"}).Expect(t, 201).Decode(t, &lease)
	if lease.ConsumerName != "unbound" {
		t.Fatalf("an unbound consumer key acquired as %q, want its own name", lease.ConsumerName)
	}
}

// KeysAcrossServers checks that a key created through one server works on
// another sharing the store within 5 s, and a revoked one stops within
// 5 s; so do a rotation and a new scope. a and b are two handles on one
// store.
func KeysAcrossServers(t *testing.T, a, b pharox.Storage) {
	e1, e2 := NewEnv(t, a, nil), NewEnv(t, b, nil)
	e1.CreatePool("main")
	// A lookup of the key before it exists is cached as not found: it
	// must not outlive the propagation bound.
	secret, err := pharox.NewAPIKeySecret()
	if err != nil {
		t.Fatal(err)
	}
	e2.Do("GET", "/v1/pools/", secret, nil).Expect(t, 401)
	k := e1.CreateKey(api.CreateKeyRequest{Name: "shared", Role: "viewer"})
	waitStatus(t, e2, "/v1/pools/", k.Secret, 200)
	e1.Admin("DELETE", "/v1/keys/"+k.ID.String(), nil).Expect(t, 200)
	e1.Do("GET", "/v1/pools/", k.Secret, nil).Expect(t, 401)
	waitStatus(t, e2, "/v1/pools/", k.Secret, 401)

	c := e1.CreateKey(api.CreateKeyRequest{Name: "rotating", Role: "consumer"})
	waitStatus(t, e2, "/v1/pools/", c.Secret, 200)
	var rotated api.CreatedKey
	e1.Admin("POST", "/v1/keys/rotating/rotate", nil).Expect(t, 200).Decode(t, &rotated)
	waitStatus(t, e2, "/v1/pools/", c.Secret, 401)
	waitStatus(t, e2, "/v1/pools/", rotated.Secret, 200)
}

func testKeysAcrossServers(t *testing.T, newStore NewStore) {
	s := newStore(t)
	KeysAcrossServers(t, s, s)
}

// RunSharedStore runs the cases that need two handles on one store, as
// two serve processes have.
func RunSharedStore(t *testing.T, newPair NewStorePair) {
	t.Run("KeysAcrossServers", func(t *testing.T) {
		a, b := newPair(t)
		KeysAcrossServers(t, a, b)
	})
	t.Run("TenantsAcrossServers", func(t *testing.T) {
		a, b := newPair(t)
		e1, e2 := NewEnv(t, a, nil), NewEnv(t, b, nil)
		tn := newTenants(t, e1)
		la := tn.acquire(tn.a.Secret, api.AcquireRequest{PoolName: "pool-a"})
		waitStatus(t, e2, "/v1/leases/"+la.ID.String(), tn.a.Secret, 200)
		for _, path := range []string{"/renew", "/release", "/outcome"} {
			e2.Do("POST", "/v1/leases/"+la.ID.String()+path, tn.b.Secret,
				map[string]any{"ttl_seconds": 86400, "kind": "banned"}).Expect(t, 404)
		}
		e2.Do("POST", "/v1/leases/"+la.ID.String()+"/release", tn.a.Secret, nil).Expect(t, 200)
	})
}
