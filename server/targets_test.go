package server_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server/servertest"
)

// TestTargetsWithoutPerSiteHealth: on a store that keeps no per-site
// health, a target is refused with 501 and one sentence saying so, not
// ignored (a client relying on it would lease blocked proxies), and
// everything without a target works as before.
func TestTargetsWithoutPerSiteHealth(t *testing.T) {
	mem := testfactory.Memory(t)
	t.Cleanup(func() { mem.Close() })
	e := servertest.NewEnv(t, testfactory.WithoutTargets(mem), nil)
	pool := e.CreatePool("main")
	proxy := e.AddProxy(pool, api.CreateProxyRequest{Host: "10.30.0.1", Port: 80})
	poolPath := "/v1/pools/" + pool.ID.String()

	l := e.Acquire(api.AcquireRequest{PoolID: pool.ID.String()})
	for name, r := range map[string]*servertest.Response{
		"acquire":       e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolName: "main", Target: "example.com"}),
		"outcome":       e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/outcome", api.OutcomeRequest{Kind: "banned", Target: "example.com"}),
		"pool targets":  e.Admin("GET", poolPath+"/targets", nil),
		"proxy targets": e.Admin("GET", poolPath+"/proxies/"+proxy.ID.String()+"/targets", nil),
	} {
		if r.Status != http.StatusNotImplemented || r.Detail() != "This server's store does not keep per-site (target) health" {
			t.Errorf("%s: %d %s, want 501 saying the store keeps no per-site health", name, r.Status, r.Body)
		}
	}
	// The refused outcome counted nothing: the lease's verdict is still free.
	var p api.Proxy
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/outcome", api.OutcomeRequest{Kind: "banned"}).Expect(t, 200).Decode(t, &p)
	if p.FailureStreak != 1 || !strings.Contains(p.LastError, "reported banned") {
		t.Fatalf("a ban without a target after a refused one: %+v", p)
	}
}
