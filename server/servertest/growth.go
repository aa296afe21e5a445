package servertest

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/observe"
	"github.com/pharox/pharox/server"
)

// A consumer key must not be able to grow the store or the metrics
// without bound: unknown pools are refused before a consumer is created,
// and each key may use a bounded number of consumer names.

// seriesCount returns how many series the gatherer exposes.
func seriesCount(t *testing.T, g prometheus.Gatherer) int {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	n := 0
	for _, f := range families {
		n += len(f.GetMetric())
	}
	return n
}

// consumerCount returns how many consumers the store holds.
func consumerCount(t *testing.T, e *Env) int {
	t.Helper()
	cs, err := e.Store.ListConsumers(context.Background())
	if err != nil {
		t.Fatalf("list consumers: %v", err)
	}
	return len(cs)
}

// testUnknownPoolsGrowNothing: 100 acquisitions from unknown pools with
// made-up consumer names used to add a consumer row each and about 21
// metric series each (with consumer labels). They must add neither, even
// with consumer labels on.
func testUnknownPoolsGrowNothing(t *testing.T, newStore NewStore) {
	reg := prometheus.NewRegistry()
	rec, err := observe.NewPrometheus(reg, observe.PrometheusOptions{ConsumerLabels: true})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, newStore(t), rec.ManagerOptions(), func(o *server.Options) { o.Registerer, o.Gatherer = reg, reg })
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.30.0.1", Port: 80})
	l := e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: "known"})
	e.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200)
	// The first 404s add the route's own request series, once.
	e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolName: "warm-up", ConsumerName: "warm-up"}).Expect(t, 404)
	e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolID: uuid.NewString(), ConsumerID: "warm-up"}).Expect(t, 404)
	series, consumers := seriesCount(t, reg), consumerCount(t, e)

	for i := range 100 {
		req := api.AcquireRequest{PoolName: fmt.Sprintf("no-such-pool-%d", i), ConsumerName: fmt.Sprintf("made-up-%d", i)}
		if i%2 == 1 {
			req = api.AcquireRequest{PoolID: uuid.NewString(), ConsumerID: fmt.Sprintf("made-up-%d", i)}
		}
		if r := e.Consumer("POST", "/v1/leases/", req).Expect(t, 404); r.Detail() != "Pool not found" {
			t.Fatalf("acquisition from an unknown pool: detail %q", r.Detail())
		}
	}
	if n := consumerCount(t, e); n != consumers {
		t.Errorf("100 acquisitions from unknown pools made %d consumers", n-consumers)
	}
	if n := seriesCount(t, reg); n != series {
		t.Errorf("100 acquisitions from unknown pools added %d metric series", n-series)
	}
}

// testConsumersPerKey: a consumer key may use a bounded number of consumer
// names; a new one past the limit is refused with 403 before it is
// created, names it used stay usable, and admin keys are not limited.
func testConsumersPerKey(t *testing.T, newStore NewStore) {
	e := env(t, newStore, func(o *server.Options) { o.MaxConsumersPerKey = 3 })
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.31.0.1", Port: 80})
	var first api.Lease
	for i := range 3 {
		l := e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: fmt.Sprintf("worker-%d", i)})
		if i == 0 {
			first = l
		}
	}
	refused := func(r *Response, name string) {
		t.Helper()
		r.Expect(t, 403)
		if d := r.Detail(); !strings.Contains(d, `"`+name+`"`) || !strings.Contains(d, "--max-consumers-per-key") {
			t.Fatalf("consumer %s past the limit: detail %q does not name it and the limit", name, d)
		}
	}
	refused(e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolName: "main", ConsumerName: "worker-3"}), "worker-3")
	refused(e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolName: "main", ConsumerID: "worker-4"}), "worker-4")
	refused(e.Consumer("POST", "/v1/consumers/", api.CreateConsumerRequest{Name: "worker-5"}), "worker-5")
	// No consumer at all is the default consumer: a name like any other.
	refused(e.Consumer("POST", "/v1/leases/", api.AcquireRequest{PoolName: "main"}), "default")

	// Names the key used stay usable, by name or by id.
	e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: "worker-0"})
	e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerID: first.ConsumerID.String()})
	e.Consumer("POST", "/v1/consumers/", api.CreateConsumerRequest{Name: "worker-1"}).Expect(t, 201)

	// Admin keys are not limited.
	e.Admin("POST", "/v1/leases/", api.AcquireRequest{PoolName: "main", ConsumerName: "ops"}).Expect(t, 201)

	var list []api.Consumer
	e.Admin("GET", "/v1/consumers/", nil).Expect(t, 200).Decode(t, &list)
	for _, c := range list {
		if c.Name == "worker-3" || c.Name == "worker-4" || c.Name == "worker-5" || c.Name == "default" {
			t.Errorf("refused consumer %q was created", c.Name)
		}
	}
	if len(list) != 4 {
		t.Errorf("consumers %+v, want worker-0..2 and ops", list)
	}
}
