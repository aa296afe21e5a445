package server_test

import (
	"testing"

	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server/servertest"
)

// TestConsumerIDAcrossServers: two servers share one store (as two
// processes over PostgreSQL or Redis would). A consumer ensured through
// server A must be the consumer of a lease acquired by its id through
// server B, which has never seen it; and neither server turns an unknown
// consumer id into a consumer.
func TestConsumerIDAcrossServers(t *testing.T) {
	store := testfactory.Memory(t)
	t.Cleanup(func() { _ = store.Close() })
	a := servertest.NewEnv(t, store, nil)
	b := servertest.NewEnv(t, store, nil)
	pool := a.CreatePool("main")
	a.AddProxy(pool, api.CreateProxyRequest{Host: "10.0.0.1", Port: 80})
	var c api.Consumer
	a.Consumer("POST", "/v1/consumers/", api.CreateConsumerRequest{Name: "bob"}).Expect(t, 201).Decode(t, &c)
	l := b.Acquire(api.AcquireRequest{PoolID: pool.ID.String(), ConsumerID: c.ID.String()})
	if l.ConsumerID != c.ID || l.ConsumerName != "bob" {
		t.Fatalf("acquired by consumer_id %s (bob) through another server: lease is consumer %s %q", c.ID, l.ConsumerID, l.ConsumerName)
	}
	b.Consumer("POST", "/v1/leases/"+l.ID.String()+"/release", nil).Expect(t, 200)

	// Both servers list the one consumer.
	for _, e := range []*servertest.Env{a, b} {
		var list []api.Consumer
		e.Consumer("GET", "/v1/consumers/", nil).Expect(t, 200).Decode(t, &list)
		if len(list) != 1 || list[0] != c {
			t.Fatalf("consumers %+v, want only %+v", list, c)
		}
	}
}
