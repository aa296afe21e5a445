package servertest

import (
	"encoding/json"
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

// This file is the Python SDK compatibility part of the suite. sdkClient
// sends the requests the Python pharox SDK's remote mode sends (method,
// path with its exact trailing slash, X-API-Key, JSON body with only the
// fields the SDK fills in) and reads the answers the way the SDK does: a
// 409 on acquire is "no proxy", a 404 on get is "no lease", any other
// non-2xx is an error carrying the detail, and every lease must parse as
// the SDK's Lease model does (UUID ids, a known status, timestamps that
// Python's datetime.fromisoformat accepts).

// pyISOTime is a timestamp that datetime.fromisoformat parses on every
// Python 3 the SDK supports: before 3.11 it takes exactly 0, 3 or 6
// fractional digits and a numeric offset, never "Z".
var pyISOTime = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?[+-]\d\d:\d\d$`)

// sdkLeaseStatuses are the lease statuses the reference contract names.
var sdkLeaseStatuses = map[string]bool{"active": true, "released": true, "expired": true}

// sdkRemoteError is what the SDK raises for an unexpected answer.
type sdkRemoteError struct {
	Status int
	Detail string
}

func (e *sdkRemoteError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Status, e.Detail) }

// sdkPool and sdkLease are the fields the SDK's parsers read.
type sdkPool struct {
	ID          uuid.UUID
	Name        string
	Description string
}

type sdkLease struct {
	ID, ProxyID, ConsumerID, PoolID uuid.UUID
	Status                          string
	AcquiredAt, ExpiresAt           time.Time
}

// same reports whether two parsed leases are the same lease in the same
// state.
func (l *sdkLease) same(o *sdkLease) bool {
	return l.ID == o.ID && l.ProxyID == o.ProxyID && l.ConsumerID == o.ConsumerID && l.PoolID == o.PoolID &&
		l.Status == o.Status && l.AcquiredAt.Equal(o.AcquiredAt) && l.ExpiresAt.Equal(o.ExpiresAt)
}

// sdkClient is the SDK's remote client and its name-to-id pool cache.
type sdkClient struct {
	t     testing.TB
	e     *Env
	key   string
	pools map[string]uuid.UUID
}

func newSDKClient(t testing.TB, e *Env, key string) *sdkClient {
	return &sdkClient{t: t, e: e, key: key, pools: map[string]uuid.UUID{}}
}

// call sends one request; json is nil for a request without a body.
func (c *sdkClient) call(method, path string, json any) *Response {
	c.t.Helper()
	return c.e.Do(method, path, c.key, json)
}

// raiseForStatus is the SDK's check: any 4xx or 5xx raises with the
// detail, or the body when there is no detail.
func raiseForStatus(r *Response) error {
	if r.Status < 400 {
		return nil
	}
	var body map[string]any
	detail := string(r.Body)
	if err := json.Unmarshal(r.Body, &body); err == nil {
		if d, ok := body["detail"]; ok {
			detail = fmt.Sprint(d)
		}
	}
	return &sdkRemoteError{Status: r.Status, Detail: detail}
}

func (c *sdkClient) must(r *Response) *Response {
	c.t.Helper()
	if err := raiseForStatus(r); err != nil {
		c.t.Fatalf("the SDK would raise: %v", err)
	}
	return r
}

func (c *sdkClient) parsePool(raw any) sdkPool {
	c.t.Helper()
	m, ok := raw.(map[string]any)
	if !ok {
		c.t.Fatalf("pool %v is not an object", raw)
	}
	p := sdkPool{ID: c.uuidField(m, "id"), Name: c.stringField(m, "name")}
	if d, ok := m["description"]; ok && d != nil {
		p.Description = fmt.Sprint(d)
	}
	return p
}

func (c *sdkClient) parseLease(r *Response) *sdkLease {
	c.t.Helper()
	m := r.Fields(c.t)
	l := &sdkLease{
		ID: c.uuidField(m, "id"), ProxyID: c.uuidField(m, "proxy_id"), ConsumerID: c.uuidField(m, "consumer_id"),
		Status: c.stringField(m, "status"), AcquiredAt: c.timeField(m, "acquired_at"), ExpiresAt: c.timeField(m, "expires_at"),
	}
	// pool_id may be absent or empty for the SDK; when present it is a UUID.
	if v, _ := m["pool_id"].(string); v != "" {
		l.PoolID = c.uuidField(m, "pool_id")
	}
	if !sdkLeaseStatuses[l.Status] {
		c.t.Fatalf("lease status %q is none of active, released, expired: %s", l.Status, r.Body)
	}
	return l
}

func (c *sdkClient) stringField(m map[string]any, k string) string {
	c.t.Helper()
	s, ok := m[k].(string)
	if !ok {
		c.t.Fatalf("field %q is %v, want a string (in %v)", k, m[k], m)
	}
	return s
}

func (c *sdkClient) uuidField(m map[string]any, k string) uuid.UUID {
	c.t.Helper()
	s := c.stringField(m, k)
	id, err := uuid.Parse(s)
	if err != nil {
		c.t.Fatalf("field %q = %q is not a UUID", k, s)
	}
	return id
}

func (c *sdkClient) timeField(m map[string]any, k string) time.Time {
	c.t.Helper()
	s := c.stringField(m, k)
	if !pyISOTime.MatchString(s) {
		c.t.Fatalf("field %q = %q is not a timestamp every Python datetime.fromisoformat parses", k, s)
	}
	ts, err := time.Parse("2006-01-02T15:04:05.999999-07:00", s)
	if err != nil {
		c.t.Fatalf("field %q = %q: %v", k, s, err)
	}
	return ts
}

// ---- the SDK's client methods ----

func (c *sdkClient) createPool(name, description string) sdkPool {
	c.t.Helper()
	r := c.must(c.call("POST", "/v1/pools/", map[string]any{"name": name, "description": description}))
	var raw any
	r.Decode(c.t, &raw)
	p := c.parsePool(raw)
	c.pools[p.Name] = p.ID
	return p
}

func (c *sdkClient) listPools() []sdkPool {
	c.t.Helper()
	r := c.must(c.call("GET", "/v1/pools/", nil))
	var raw []any
	r.Decode(c.t, &raw)
	out := make([]sdkPool, len(raw))
	c.pools = map[string]uuid.UUID{}
	for i, p := range raw {
		out[i] = c.parsePool(p)
		c.pools[out[i].Name] = out[i].ID
	}
	return out
}

func (c *sdkClient) getPool(id string) (sdkPool, error) {
	c.t.Helper()
	r := c.call("GET", "/v1/pools/"+id, nil)
	if err := raiseForStatus(r); err != nil {
		return sdkPool{}, err
	}
	var raw any
	r.Decode(c.t, &raw)
	return c.parsePool(raw), nil
}

func (c *sdkClient) deletePool(id string) error {
	c.t.Helper()
	return raiseForStatus(c.call("DELETE", "/v1/pools/"+id, nil))
}

// addProxy posts only the fields given, without a status, like the SDK.
func (c *sdkClient) addProxy(poolID string, fields map[string]any) map[string]any {
	c.t.Helper()
	if _, ok := fields["status"]; ok {
		c.t.Fatal("the SDK never sends a status when adding a proxy")
	}
	return c.must(c.call("POST", "/v1/pools/"+poolID+"/proxies/", fields)).Fields(c.t)
}

func (c *sdkClient) listProxies(poolID string) []map[string]any {
	c.t.Helper()
	var out []map[string]any
	c.must(c.call("GET", "/v1/pools/"+poolID+"/proxies/", nil)).Decode(c.t, &out)
	return out
}

func (c *sdkClient) updateProxyStatus(poolID, proxyID, status string) (map[string]any, error) {
	c.t.Helper()
	r := c.call("PATCH", "/v1/pools/"+poolID+"/proxies/"+proxyID, map[string]any{"status": status})
	if err := raiseForStatus(r); err != nil {
		return nil, err
	}
	return r.Fields(c.t), nil
}

func (c *sdkClient) deleteProxy(poolID, proxyID string) error {
	c.t.Helper()
	return raiseForStatus(c.call("DELETE", "/v1/pools/"+poolID+"/proxies/"+proxyID, nil))
}

// acquireLease returns nil on 409, as the SDK does.
func (c *sdkClient) acquireLease(poolID, consumerID string, ttlSeconds int, filters map[string]any, selector string) (*sdkLease, error) {
	c.t.Helper()
	if selector == "" {
		selector = "first_available"
	}
	payload := map[string]any{"pool_id": poolID, "consumer_id": consumerID, "ttl_seconds": ttlSeconds, "strategy": selector}
	if len(filters) > 0 {
		payload["filters"] = filters
	}
	r := c.call("POST", "/v1/leases/", payload)
	if r.Status == http.StatusConflict {
		return nil, nil
	}
	if err := raiseForStatus(r); err != nil {
		return nil, err
	}
	return c.parseLease(r), nil
}

// getLease returns nil on 404, as the SDK does.
func (c *sdkClient) getLease(id string) (*sdkLease, error) {
	c.t.Helper()
	r := c.call("GET", "/v1/leases/"+id, nil)
	if r.Status == http.StatusNotFound {
		return nil, nil
	}
	if err := raiseForStatus(r); err != nil {
		return nil, err
	}
	return c.parseLease(r), nil
}

func (c *sdkClient) releaseLease(id string) (*sdkLease, error) {
	c.t.Helper()
	r := c.call("POST", "/v1/leases/"+id+"/release", map[string]any{})
	if err := raiseForStatus(r); err != nil {
		return nil, err
	}
	return c.parseLease(r), nil
}

// ---- the SDK's high-level calls ----

// errSDKPoolNotFound is the SDK's PoolNotFoundError.
type errSDKPoolNotFound struct{ name string }

func (e *errSDKPoolNotFound) Error() string { return "pool not found: " + e.name }

// acquireProxy resolves the pool by name through the cache (listing pools
// on a miss) and evicts the cache entry when the acquisition answers 404.
func (c *sdkClient) acquireProxy(pool, consumer string, ttlSeconds int, filters map[string]any, selector string) (*sdkLease, error) {
	c.t.Helper()
	id, ok := c.pools[pool]
	if !ok {
		c.listPools()
		if id, ok = c.pools[pool]; !ok {
			return nil, &errSDKPoolNotFound{pool}
		}
	}
	l, err := c.acquireLease(id.String(), consumer, ttlSeconds, filters, selector)
	if re, ok := err.(*sdkRemoteError); ok && re.Status == http.StatusNotFound {
		delete(c.pools, pool)
		return nil, &errSDKPoolNotFound{pool}
	}
	return l, err
}

// withLease acquires, runs fn and releases on the way out, also when fn
// let the lease expire; the release's error is what the user's code would
// see at the end of the block.
func (c *sdkClient) withLease(pool, consumer string, ttlSeconds int, fn func(*sdkLease)) (release *sdkLease, err error) {
	c.t.Helper()
	l, err := c.acquireProxy(pool, consumer, ttlSeconds, nil, "")
	if err != nil {
		return nil, err
	}
	fn(l)
	if l == nil {
		return nil, nil
	}
	return c.releaseLease(l.ID.String())
}

// ---- the suite's cases ----

// testPythonSDKFlow runs the whole flow a Python SDK user goes through.
func testPythonSDKFlow(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	admin := newSDKClient(t, e, AdminKey)
	sdk := newSDKClient(t, e, ConsumerKey)
	noErr := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: the SDK would raise %v", what, err)
		}
	}

	// Pool → proxies → activate.
	pool := admin.createPool("main", "")
	if pool.Name != "main" || pool.Description != "" {
		t.Fatalf("create_pool gave %+v", pool)
	}
	pid := pool.ID.String()
	got, err := admin.getPool(pid)
	noErr("get_pool", err)
	if got != pool {
		t.Fatalf("get_pool gave %+v, want %+v", got, pool)
	}
	ar := admin.addProxy(pid, map[string]any{"host": "10.20.0.1", "port": 8080, "protocol": "http",
		"username": "alice", "password": "pw-sdk", "country": "AR", "city": "Buenos Aires",
		"latitude": -34.6, "longitude": -58.4})
	de := admin.addProxy(pid, map[string]any{"host": "10.20.0.2", "port": 1080, "protocol": "socks5", "country": "DE"})
	off := admin.addProxy(pid, map[string]any{"host": "10.20.0.3", "port": 3128, "protocol": "https", "country": "BR"})
	for _, p := range []map[string]any{ar, de, off} {
		if _, err := uuid.Parse(fmt.Sprint(p["id"])); err != nil || p["host"] == nil || p["port"] == nil {
			t.Fatalf("add_proxy answer %v", p)
		}
	}
	if strings.Contains(fmt.Sprint(ar), "pw-sdk") {
		t.Fatalf("add_proxy answer shows the password: %v", ar)
	}
	if n := len(admin.listProxies(pid)); n != 3 {
		t.Fatalf("list_proxies: %d proxies, want 3", n)
	}
	for _, p := range []map[string]any{ar, de} {
		up, err := admin.updateProxyStatus(pid, fmt.Sprint(p["id"]), "active")
		noErr("update_proxy_status active", err)
		if up["status"] != "active" {
			t.Fatalf("update_proxy_status answer %v", up)
		}
	}
	if up, err := admin.updateProxyStatus(pid, fmt.Sprint(off["id"]), "inactive"); err != nil || up["status"] != "inactive" {
		t.Fatalf("update_proxy_status inactive: %v %v", up, err)
	}

	// Acquire with the default consumer, as acquire_proxy("main") does.
	def, err := sdk.acquireProxy("main", "default", 300, nil, "")
	noErr("acquire_proxy default", err)
	if def == nil || def.Status != "active" || def.PoolID != pool.ID || def.ConsumerID == uuid.Nil {
		t.Fatalf("acquire_proxy default gave %+v", def)
	}
	if d := def.ExpiresAt.Sub(def.AcquiredAt); d != 300*time.Second {
		t.Fatalf("ttl_seconds 300 gave a lease of %v", d)
	}
	// "default" is the consumer an acquisition without one gets.
	var plain api.Lease
	e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pid}).Expect(t, 201).Decode(t, &plain)
	if plain.ConsumerID != def.ConsumerID {
		t.Fatalf("consumer_id \"default\" is consumer %s, the default consumer is %s", def.ConsumerID, plain.ConsumerID)
	}

	// A named consumer, filters and least_used.
	filters := map[string]any{"country": "AR", "city": "Buenos Aires", "latitude": -34.6, "longitude": -58.4, "radius_km": 50.0}
	named, err := sdk.acquireProxy("main", "scraper-7", 120, filters, "least_used")
	noErr("acquire_proxy scraper-7", err)
	if named == nil || named.ProxyID.String() != ar["id"] {
		t.Fatalf("filtered acquisition gave %+v, want proxy %v", named, ar["id"])
	}
	if named.ConsumerID == def.ConsumerID {
		t.Fatal("consumer scraper-7 is the default consumer")
	}
	again, err := sdk.acquireProxy("main", "scraper-7", 120, map[string]any{"country": "DE"}, "round_robin")
	noErr("acquire_proxy scraper-7 again", err)
	if again == nil || again.ConsumerID != named.ConsumerID || again.ProxyID.String() != de["id"] {
		t.Fatalf("second acquisition as scraper-7 gave %+v, want consumer %s on proxy %v", again, named.ConsumerID, de["id"])
	}

	// A miss is None, not an error: nothing active in BR.
	miss, err := sdk.acquireProxy("main", "scraper-7", 300, map[string]any{"country": "BR"}, "")
	noErr("acquire_proxy miss", err)
	if miss != nil {
		t.Fatalf("a miss gave lease %+v", miss)
	}
	if r := e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pid, "consumer_id": "scraper-7",
		"ttl_seconds": 300, "strategy": "first_available", "filters": map[string]any{"country": "BR"}}); r.Detail() != "No proxy available" {
		t.Fatalf("miss answer %d %s", r.Status, r.Body)
	}

	// with_lease whose block finishes in time: released on the way out.
	var inside *sdkLease
	rel, err := sdk.withLease("main", "scraper-7", 300, func(l *sdkLease) {
		if l == nil {
			t.Fatal("with_lease yielded None")
		}
		got, err := sdk.getLease(l.ID.String())
		noErr("get_lease inside with_lease", err)
		if got == nil || got.Status != "active" || got.ID != l.ID {
			t.Fatalf("get_lease inside with_lease: %+v", got)
		}
		inside = l
	})
	noErr("with_lease exit", err)
	if rel.Status != "released" || rel.ID != inside.ID {
		t.Fatalf("with_lease release answered %+v", rel)
	}
	// Releasing again (a retry, a second release_proxy) is a no-op.
	rel, err = sdk.releaseLease(inside.ID.String())
	noErr("release_lease again", err)
	if rel.Status != "released" {
		t.Fatalf("second release answered %+v", rel)
	}

	// with_lease whose block outlives the lease: the release at the end
	// must not raise.
	rel, err = sdk.withLease("main", "scraper-7", 1, func(l *sdkLease) {
		if l == nil {
			t.Fatal("with_lease yielded None")
		}
		waitPast(t, l.ExpiresAt)
		inside = l
	})
	noErr("with_lease exit after the lease expired", err)
	if rel.Status != "expired" || rel.ID != inside.ID {
		t.Fatalf("release after expiry answered %+v, want the lease as expired", rel)
	}
	if got, err := sdk.getLease(inside.ID.String()); err != nil || got == nil || got.Status != "expired" {
		t.Fatalf("get_lease after expiry: %+v %v", got, err)
	}

	// get / release by id; unknown ids of any shape.
	got2, err := sdk.getLease(named.ID.String())
	noErr("get_lease", err)
	if got2 == nil || !got2.same(named) {
		t.Fatalf("get_lease gave %+v, want %+v", got2, named)
	}
	for _, id := range []string{"nonexistent", uuid.NewString()} {
		if l, err := sdk.getLease(id); err != nil || l != nil {
			t.Fatalf("get_lease(%q) = %+v, %v; want None", id, l, err)
		}
		if _, err := sdk.releaseLease(id); !isStatus(err, 404) {
			t.Fatalf("release_lease(%q): %v, want a 404", id, err)
		}
	}
	for _, l := range []*sdkLease{def, named, again} {
		rel, err := sdk.releaseLease(l.ID.String())
		noErr("release_lease", err)
		if rel.Status != "released" || rel.ID != l.ID {
			t.Fatalf("release_lease answered %+v", rel)
		}
	}
	e.Consumer("POST", "/v1/leases/"+plain.ID.String()+"/release", map[string]any{}).Expect(t, 200)

	// Unknown ids in the admin paths the SDK uses.
	if _, err := admin.updateProxyStatus(pid, "nonexistent", "active"); !isStatus(err, 404) {
		t.Fatalf("update_proxy_status on an unknown proxy: %v, want a 404", err)
	}
	if _, err := admin.getPool("nonexistent"); !isStatus(err, 404) {
		t.Fatalf("get_pool on an unknown pool: %v, want a 404", err)
	}

	// Delete: proxies, then the pool; acquiring then finds no pool and
	// the SDK forgets its cached id.
	for _, p := range []map[string]any{ar, de, off} {
		noErr("delete_proxy", admin.deleteProxy(pid, fmt.Sprint(p["id"])))
	}
	if n := len(admin.listProxies(pid)); n != 0 {
		t.Fatalf("list_proxies after deleting all: %d", n)
	}
	noErr("delete_pool", admin.deletePool(pid))
	if _, err := admin.getPool(pid); !isStatus(err, 404) {
		t.Fatalf("get_pool after delete_pool: %v", err)
	}
	if _, err := sdk.acquireProxy("main", "default", 300, nil, ""); err == nil {
		t.Fatal("acquire_proxy from a deleted pool succeeded")
	} else if _, ok := err.(*errSDKPoolNotFound); !ok {
		t.Fatalf("acquire_proxy from a deleted pool: %v, want PoolNotFoundError", err)
	}
	if _, cached := sdk.pools["main"]; cached {
		t.Fatal("the 404 did not evict the pool from the SDK's cache")
	}
	if _, err := sdk.acquireProxy("main", "default", 300, nil, ""); err == nil {
		t.Fatal("acquire_proxy by name after delete succeeded")
	}
}

func isStatus(err error, status int) bool {
	re, ok := err.(*sdkRemoteError)
	return ok && re.Status == status
}

// waitPast sleeps until t has passed, with a little margin for a store
// whose clock reads a moment behind ours.
func waitPast(tb testing.TB, t time.Time) {
	tb.Helper()
	d := time.Until(t) + 50*time.Millisecond
	if d > 10*time.Second {
		tb.Fatalf("refusing to wait %v", d)
	}
	time.Sleep(max(d, 0))
}

// testConsumerIDAsName covers consumer_id as the SDK sends it.
func testConsumerIDAsName(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	pid := pool.ID.String()
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.21.0.1", Port: 80})

	byName := func(id string) api.Lease {
		t.Helper()
		return e.Acquire(api.AcquireRequest{PoolID: pid, ConsumerID: id})
	}
	// A name, created on first use; the same name is the same consumer,
	// through consumer_id or consumer_name.
	a := byName("user1")
	if a.ConsumerName != "user1" {
		t.Fatalf("consumer_id user1 leased as %q", a.ConsumerName)
	}
	if b := byName("user1"); b.ConsumerID != a.ConsumerID {
		t.Fatalf("consumer_id user1 gave consumers %s and %s", a.ConsumerID, b.ConsumerID)
	}
	if c := e.Acquire(api.AcquireRequest{PoolID: pid, ConsumerName: "user1"}); c.ConsumerID != a.ConsumerID {
		t.Fatalf("consumer_name user1 is %s, consumer_id user1 is %s", c.ConsumerID, a.ConsumerID)
	}
	// The id of a known consumer is that consumer.
	if d := byName(a.ConsumerID.String()); d.ConsumerID != a.ConsumerID || d.ConsumerName != "user1" {
		t.Fatalf("consumer_id %s leased as %s %q", a.ConsumerID, d.ConsumerID, d.ConsumerName)
	}
	// An id-shaped string that is nobody's id is a name, the same each time.
	made := uuid.NewString()
	m1 := byName(made)
	if m1.ConsumerName != made || m1.ConsumerID.String() == made {
		t.Fatalf("unknown id-shaped consumer_id leased as %s %q", m1.ConsumerID, m1.ConsumerName)
	}
	if m2 := byName(made); m2.ConsumerID != m1.ConsumerID {
		t.Fatalf("consumer_id %s gave consumers %s and %s", made, m1.ConsumerID, m2.ConsumerID)
	}
	// Both fields: they must agree.
	e.Acquire(api.AcquireRequest{PoolID: pid, ConsumerID: "user1", ConsumerName: "user1"})
	e.Acquire(api.AcquireRequest{PoolID: pid, ConsumerID: a.ConsumerID.String(), ConsumerName: "user1"})
	e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolID: pid, ConsumerID: "user1", ConsumerName: "user2"}).Expect(t, 422)
	// Bad names are refused naming the field.
	for _, bad := range []string{"   ", "a\nb", strings.Repeat("x", 201)} {
		r := e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pid, "consumer_id": bad}).Expect(t, 422)
		if !strings.Contains(r.Detail(), "consumer_id") {
			t.Fatalf("consumer_id %q: detail %q does not name consumer_id", bad, r.Detail())
		}
	}

	// An unknown pool creates no consumer, by id or by name.
	e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": uuid.NewString(), "consumer_id": "ghost-1"}).Expect(t, 404)
	e.Consumer("POST", "/v1/leases/", map[string]any{"pool_name": "nope", "consumer_id": "ghost-2"}).Expect(t, 404)
	e.Consumer("POST", "/v1/leases/", map[string]any{"pool_name": "nope", "consumer_name": "ghost-3"}).Expect(t, 404)
	var list []api.Consumer
	e.Consumer("GET", "/v1/consumers/", nil).Expect(t, 200).Decode(t, &list)
	for _, c := range list {
		if strings.HasPrefix(c.Name, "ghost-") {
			t.Fatalf("an acquisition from an unknown pool created consumer %q", c.Name)
		}
	}

	// Concurrent first uses of one name through several servers on one
	// store give one consumer.
	const servers, perServer = 3, 4
	envs := []*Env{e}
	for range servers - 1 {
		envs = append(envs, NewEnv(t, e.Store, nil))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[uuid.UUID]int{}
	var failures []string
	for i := range servers * perServer {
		wg.Go(func() {
			r := envs[i%servers].Do("POST", "/v1/leases/", ConsumerKey,
				map[string]any{"pool_id": pid, "consumer_id": "fresh-crawler", "ttl_seconds": 60})
			mu.Lock()
			defer mu.Unlock()
			var l api.Lease
			if r.Status != 201 || json.Unmarshal(r.Body, &l) != nil {
				failures = append(failures, fmt.Sprintf("%d %s", r.Status, r.Body))
				return
			}
			ids[l.ConsumerID]++
		})
	}
	wg.Wait()
	if len(failures) > 0 || len(ids) != 1 {
		t.Fatalf("concurrent first uses of one name: consumers %v, failures %v", ids, failures)
	}
	e.Consumer("GET", "/v1/consumers/", nil).Expect(t, 200).Decode(t, &list)
	n := 0
	for _, c := range list {
		if c.Name == "fresh-crawler" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d consumers named fresh-crawler, want 1", n)
	}
}

// testUnknownIDs checks that every {..._id} path segment answers 404 for
// an id the server does not know, whatever its shape.
func testUnknownIDs(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	pid := pool.ID.String()
	proxy := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.22.0.1", Port: 80})
	for _, id := range []string{"nonexistent", "123", uuid.NewString()} {
		cases := []struct {
			method, path string
			body         any
			detail       string
		}{
			{"GET", "/v1/leases/" + id, nil, "Lease not found"},
			{"POST", "/v1/leases/" + id + "/release", map[string]any{}, "Lease not found"},
			{"POST", "/v1/leases/" + id + "/renew", map[string]any{"ttl_seconds": 10}, "Lease not found"},
			{"POST", "/v1/leases/" + id + "/outcome", map[string]any{"kind": "success"}, "Lease not found"},
			{"GET", "/v1/pools/" + id, nil, "Pool not found"},
			{"DELETE", "/v1/pools/" + id, nil, "Pool not found"},
			{"GET", "/v1/pools/" + id + "/proxies/", nil, "Pool not found"},
			{"POST", "/v1/pools/" + id + "/proxies/", map[string]any{"host": "10.22.0.9", "port": 80}, "Pool not found"},
			{"GET", "/v1/pools/" + pid + "/proxies/" + id, nil, "Proxy not found"},
			{"PATCH", "/v1/pools/" + pid + "/proxies/" + id, map[string]any{"status": "active"}, "Proxy not found"},
			{"DELETE", "/v1/pools/" + pid + "/proxies/" + id, nil, "Proxy not found"},
			{"GET", "/v1/pools/" + id + "/proxies/" + proxy.ID.String(), nil, "not found"},
		}
		for _, c := range cases {
			r := e.Admin(c.method, c.path, c.body)
			if r.Status != 404 || !strings.Contains(r.Detail(), c.detail) {
				t.Errorf("%s %s: %d %s, want 404 with %q", c.method, c.path, r.Status, r.Body, c.detail)
			}
		}
	}
}

// testReleaseEnded checks that releasing an ended lease answers 200 with
// the lease as it ended and frees nothing, on every store alike.
func testReleaseEnded(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	pid := pool.ID.String()
	proxy := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.23.0.1", Port: 80, MaxConcurrency: ptrutil.Ptr(1)})
	release := func(id uuid.UUID) api.Lease {
		t.Helper()
		var l api.Lease
		e.Consumer("POST", "/v1/leases/"+id.String()+"/release", map[string]any{}).Expect(t, 200).Decode(t, &l)
		return l
	}

	// Released, then released again while another lease holds the only
	// slot: the answer is the released lease and the holder keeps it.
	a := e.Acquire(api.AcquireRequest{PoolID: pid})
	first := release(a.ID)
	b := e.Acquire(api.AcquireRequest{PoolID: pid})
	second := release(a.ID)
	if second.Status != "released" || second.ID != a.ID || second.ReleasedAt == nil || first.ReleasedAt == nil ||
		second.ReleasedAt.Sub(first.ReleasedAt.Time).Abs() > time.Millisecond {
		t.Fatalf("second release answered %+v, first %+v", second, first)
	}
	e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pid}).Expect(t, 409)
	if p := getProxy(t, e, pid, proxy.ID); p.CurrentLeases != 1 {
		t.Fatalf("after releasing an ended lease the proxy holds %d leases, want 1", p.CurrentLeases)
	}
	release(b.ID)

	// Past its expiry and not reclaimed yet: expired, on every store.
	c := e.Acquire(api.AcquireRequest{PoolID: pid, TTLSeconds: ptrutil.Ptr(0.05)})
	waitPast(t, c.ExpiresAt.Time)
	for i := range 2 {
		if l := release(c.ID); l.Status != "expired" || l.ID != c.ID {
			t.Fatalf("release %d of an expired lease answered %+v, want it expired", i+1, l)
		}
	}
	if p := getProxy(t, e, pid, proxy.ID); p.CurrentLeases != 0 {
		t.Fatalf("after the expired lease the proxy holds %d leases", p.CurrentLeases)
	}
	// Reclaimed by the reaper: the same answer.
	d := e.Acquire(api.AcquireRequest{PoolID: pid, TTLSeconds: ptrutil.Ptr(0.05)})
	waitPast(t, d.ExpiresAt.Time)
	e.Server.Reap(t.Context())
	if l := release(d.ID); l.Status != "expired" {
		t.Fatalf("release of a reaped lease answered %+v", l)
	}
	// The slot is free exactly once.
	e.Acquire(api.AcquireRequest{PoolID: pid})
	e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pid}).Expect(t, 409)
}

func getProxy(t *testing.T, e *Env, poolID string, id uuid.UUID) api.Proxy {
	t.Helper()
	var p api.Proxy
	e.Admin("GET", "/v1/pools/"+poolID+"/proxies/"+id.String(), nil).Expect(t, 200).Decode(t, &p)
	return p
}

// testWaitLimit checks that a wait longer than the server allows is
// refused, naming the maximum, rather than cut short.
func testWaitLimit(t *testing.T, newStore NewStore) {
	e := env(t, newStore, func(o *server.Options) { o.MaxWait = 2 * time.Second })
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.24.0.1", Port: 80})
	for _, w := range []any{2.5, 100000, 1e308} {
		r := e.Consumer("POST", "/v1/leases/", map[string]any{"pool_id": pool.ID.String(), "wait_seconds": w}).Expect(t, 422)
		if !strings.Contains(r.Detail(), "wait_seconds") || !strings.Contains(r.Detail(), "maximum wait of 2 seconds") {
			t.Fatalf("wait_seconds %v: detail %q does not name the field and the maximum", w, r.Detail())
		}
	}
	// Up to the maximum is fine.
	e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), WaitSeconds: 2})
}
