package mongo

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
)

func TestXScan(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, _ := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	one := 1
	ps := make([]pharox.Proxy, 1000)
	for i := range ps {
		ps[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.9.%d.%d", i/250, i%250+1), Port: 1000 + i,
			Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one, Country: "US", Tags: []string{"a", "b"}}
	}
	if _, err := s.AddProxies(ctx, ps); err != nil {
		t.Fatal(err)
	}
	pid := idString(pool.ID)
	base := bson.D{{Key: "pool", Value: pid}, {Key: "rank", Value: bson.D{{Key: "$lte", Value: 1}}}}
	for _, c := range []struct {
		name string
		f    func() error
	}{
		{"sorted page", func() error {
			cur, err := s.proxies.Find(ctx, base, options.Find().SetSort(bson.D{{Key: "rank", Value: 1}, {Key: "checked_at", Value: -1}, {Key: "_id", Value: 1}}).SetBatchSize(32).SetLimit(32))
			if err != nil {
				return err
			}
			var ds []proxyDoc
			return cur.All(ctx, &ds)
		}},
		{"unsorted page", func() error {
			cur, err := s.proxies.Find(ctx, base, options.Find().SetBatchSize(32).SetLimit(32))
			if err != nil {
				return err
			}
			var ds []proxyDoc
			return cur.All(ctx, &ds)
		}},
		{"unsorted no match", func() error {
			cur, err := s.proxies.Find(ctx, bson.D{{Key: "pool", Value: "x"}}, options.Find().SetBatchSize(32).SetLimit(32))
			if err != nil {
				return err
			}
			var ds []proxyDoc
			return cur.All(ctx, &ds)
		}},
		{"by _id", func() error {
			_, err := s.getProxyDoc(ctx, idString(ps[500].ID))
			return err
		}},
		{"count slots empty", func() error {
			_, err := s.countSlots(ctx, bson.D{{Key: "pool", Value: pid}}, true)
			return err
		}},
		{"all proxies to client", func() error {
			var ds []proxyDoc
			return s.findAll(ctx, s.proxies, base, bson.D{{Key: "_id", Value: 1}}, &ds)
		}},
	} {
		start := time.Now()
		for range 10 {
			if err := c.f(); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("%s: %v", c.name, time.Since(start)/10)
	}
}
