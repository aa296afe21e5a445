package servertest

import (
	"strings"
	"testing"

	"github.com/pharox/pharox/api"
)

// testTargets checks per-site (target) health on the wire: target on
// acquisitions and outcomes, the pool's and a proxy's health per site, and
// what a store without per-site health answers.
func testTargets(t *testing.T, newStore NewStore) {
	e := env(t, newStore, nil)
	pool := e.CreatePool("main")
	first := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.20.0.1", Port: 80})
	second := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.20.0.2", Port: 80})
	poolPath := "/v1/pools/" + pool.ID.String()

	// A target that names no site is the client's mistake, in one
	// sentence quoting it, whatever the store.
	for _, bad := range []string{"http://", "exa mple.com", "a..b", "host:99999"} {
		r := e.Consumer("POST", "/v1/leases/", map[string]any{"pool_name": "main", "target": bad}).Expect(t, 422)
		if d := r.Detail(); !strings.Contains(d, "target") || !strings.Contains(d, bad) {
			t.Errorf("acquire with target %q: detail %q, want one naming the target as given", bad, d)
		}
	}
	l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})
	r := e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/outcome", map[string]any{"kind": "banned", "target": "exa mple.com"}).Expect(t, 422)
	if d := r.Detail(); !strings.Contains(d, `"exa mple.com"`) {
		t.Errorf("outcome with a bad target: detail %q", d)
	}
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200)

	// The proxy leased first is banned by one site: it cools down for that
	// site (however the client spells it) and for nothing else.
	l = e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), Target: "https://www.shop.example.co.uk/cart"})
	if l.ProxyID != first.ID {
		first, second = second, first
	}
	var p api.Proxy
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/outcome", api.OutcomeRequest{Kind: "banned", StatusCode: 403, Target: "shop.example.co.uk"}).
		Expect(t, 200).Decode(t, &p)
	if p.Status != "active" {
		t.Fatalf("a ban for one site made the proxy %s, want it active for the others", p.Status)
	}
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200)
	for range 3 {
		got := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), Target: "example.co.uk"})
		if got.ProxyID != second.ID {
			t.Fatalf("acquired the proxy cooling down for example.co.uk for it")
		}
		e.Consumer("POST", "/v1/leases/"+got.ID.String()+"/release", nil).Expect(t, 200)
	}
	for _, other := range []string{"", "other.example.com"} {
		got := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), Target: other})
		if got.ProxyID != first.ID {
			t.Fatalf("acquisition with target %q skipped the proxy cooling for another site", other)
		}
		e.Consumer("POST", "/v1/leases/"+got.ID.String()+"/release", nil).Expect(t, 200)
	}

	var stats []api.TargetStats
	e.Admin("GET", poolPath+"/targets", nil).Expect(t, 200).Decode(t, &stats)
	if len(stats) != 1 || stats[0] != (api.TargetStats{Target: "example.co.uk", UsableProxies: 1, CoolingProxies: 1, BansLastHour: 1}) {
		t.Fatalf("pool targets = %+v, want example.co.uk with 1 usable, 1 cooling, 1 ban", stats)
	}
	var byName []api.TargetStats
	e.Admin("GET", "/v1/pools/main/targets", nil).Expect(t, 200).Decode(t, &byName)
	if len(byName) != 1 {
		t.Fatalf("pool targets by pool name = %+v", byName)
	}
	var states []api.TargetState
	e.Admin("GET", poolPath+"/proxies/"+first.ID.String()+"/targets", nil).Expect(t, 200).Decode(t, &states)
	if len(states) != 1 || states[0].Target != "example.co.uk" || !states[0].Cooling || states[0].CoolingUntil == nil ||
		states[0].LastStatusCode != 403 || states[0].ProxyID != first.ID {
		t.Fatalf("proxy targets = %+v", states)
	}
	e.Admin("GET", poolPath+"/proxies/"+second.ID.String()+"/targets", nil).Expect(t, 200).Decode(t, &states)
	if len(states) != 0 {
		t.Fatalf("targets of the proxy nobody reported for = %+v", states)
	}

	// Prometheus counts the calls that named a site, with no label per site.
	metrics := string(e.Admin("GET", "/metrics", nil).Expect(t, 200).Body)
	for _, want := range []string{`pharox_target_outcomes_total{kind="banned"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, "example.co.uk") {
		t.Error("/metrics names a site: a label per site would grow with traffic")
	}

	// Per-site health is the admin's: it tells which sites are scraped.
	e.Consumer("GET", poolPath+"/targets", nil).Expect(t, 403)
	e.Consumer("GET", poolPath+"/proxies/"+first.ID.String()+"/targets", nil).Expect(t, 403)
	e.Admin("GET", "/v1/pools/nope/targets", nil).Expect(t, 404)
	e.Admin("GET", poolPath+"/targets?limit=0", nil).Expect(t, 422)
	other := e.CreatePool("other")
	e.Admin("GET", "/v1/pools/"+other.ID.String()+"/proxies/"+first.ID.String()+"/targets", nil).Expect(t, 404)
}
