package mongo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/mongotest"
)

// docCounter counts the documents the server returns to find and getMore
// commands, per collection.
type docCounter struct {
	mu    sync.Mutex
	colls map[int64]string
	docs  map[string]int
}

func newDocCounter() *docCounter {
	return &docCounter{colls: map[int64]string{}, docs: map[string]int{}}
}

func (c *docCounter) monitor() *event.CommandMonitor {
	return &event.CommandMonitor{
		Started: func(_ context.Context, e *event.CommandStartedEvent) {
			var coll string
			switch e.CommandName {
			case "find":
				coll, _ = e.Command.Lookup("find").StringValueOK()
			case "getMore":
				coll, _ = e.Command.Lookup("collection").StringValueOK()
			default:
				return
			}
			c.mu.Lock()
			c.colls[e.RequestID] = coll
			c.mu.Unlock()
		},
		Succeeded: func(_ context.Context, e *event.CommandSucceededEvent) {
			c.mu.Lock()
			defer c.mu.Unlock()
			coll, ok := c.colls[e.RequestID]
			if !ok {
				return
			}
			delete(c.colls, e.RequestID)
			for _, batch := range []string{"firstBatch", "nextBatch"} {
				if v, err := e.Reply.LookupErr("cursor", batch); err == nil {
					vals, _ := v.Array().Values()
					c.docs[coll] += len(vals)
				}
			}
		},
	}
}

// take returns the documents counted since the last call and resets.
func (c *docCounter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.docs
	c.docs = map[string]int{}
	return out
}

// TestStrategiesReadBoundedPages shows that LeastUsed and Random read a
// few pages of documents per acquisition, not the pool: on a pool of
// 1,000 proxies, idle and then with all but 20 of them full, every
// acquisition's reads of proxies, their loads and their slots stay under
// three pages' worth (96), while the pool's documents number in the
// thousands. A command monitor counts the documents the server returns.
// (On MongoDB the partial proxy_loads indexes also bound what the server
// examines: TestStrategiesExamineBounded. FerretDB v1 examines every
// document of a collection for any query but an _id lookup, whatever the
// store asks.)
func TestStrategiesReadBoundedPages(t *testing.T) {
	const (
		n     = 1000
		free  = 20
		bound = 3 * firstPage
	)
	counter := newDocCounter()
	s, pool, consumer := seedBoundedPool(t, counter.monitor(), n)
	ctx := context.Background()
	check := func(phase string, st pharox.Strategy) {
		t.Helper()
		counter.take()
		for i := range 3 {
			l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: pool, ConsumerID: consumer.ID, ConsumerName: consumer.Name,
				Duration: time.Minute, Strategy: st})
			if err != nil {
				t.Fatalf("%s, %s acquisition %d: %v", phase, st, i, err)
			}
			got := counter.take()
			read := got[s.cfg.prefix+"proxies"] + got[s.cfg.prefix+"proxy_loads"] + got[s.cfg.prefix+"slots"]
			if read > bound {
				t.Fatalf("%s, %s acquisition %d read %d proxy, load and slot documents (%v) from a pool of %d; want at most %d",
					phase, st, i, read, got, n, bound)
			}
			if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
				t.Fatal(err)
			}
			counter.take()
		}
	}
	for _, st := range []pharox.Strategy{pharox.LeastUsed, pharox.Random} {
		check("idle pool", st)
	}
	fillAllBut(t, s, pool, consumer, free)
	for _, st := range []pharox.Strategy{pharox.LeastUsed, pharox.Random} {
		check(fmt.Sprintf("pool with %d of %d proxies free", free, n), st)
	}
	// For contrast: first_available walks past the full proxies.
	if _, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: pool, ConsumerID: consumer.ID, ConsumerName: consumer.Name,
		Duration: time.Minute, Strategy: pharox.FirstAvailable}); err != nil {
		t.Fatal(err)
	}
	t.Logf("first_available in the same pool read %v", counter.take())
}

// TestStrategiesExamineBounded checks, on a real MongoDB, that the server
// examines a page's worth of loads for a LeastUsed or Random walk's first
// page in a pool of 2,000 proxies where all but 20 are full: the partial
// indexes hold only proxies with room.
func TestStrategiesExamineBounded(t *testing.T) {
	s, pool, consumer := seedBoundedPool(t, nil, 2000)
	if isFerretDB(t, s) {
		t.Skip("FerretDB v1 examines every document of the collection for such a query (no index is used); TestStrategiesReadBoundedPages bounds what the store reads")
	}
	fillAllBut(t, s, pool, consumer, 20)
	pd, err := s.findPool(context.Background(), bson.D{{Key: "name", Value: pool}}, pool)
	if err != nil {
		t.Fatal(err)
	}
	base := bson.D{
		{Key: "pool", Value: pd.ID}, {Key: "rank", Value: bson.D{{Key: "$in", Value: bson.A{0, 1}}}},
		{Key: "room", Value: bson.D{{Key: "$gt", Value: 0}}},
	}
	for _, c := range []struct {
		name string
		q    bson.D
		sort bson.D
	}{
		{"least_used", base, bson.D{{Key: "rank", Value: 1}, {Key: "n", Value: 1}, {Key: "_id", Value: 1}}},
		{"random", append(bson.D{{Key: "_id", Value: bson.D{{Key: "$gte", Value: uuid.NewString()}}}}, base...), bson.D{{Key: "_id", Value: 1}}},
	} {
		var out bson.M
		err := s.db.RunCommand(context.Background(), bson.D{
			{Key: "explain", Value: bson.D{{Key: "find", Value: s.loads.Name()}, {Key: "filter", Value: c.q}, {Key: "sort", Value: c.sort}, {Key: "limit", Value: firstPage}}},
			{Key: "verbosity", Value: "executionStats"},
		}).Decode(&out)
		if err != nil {
			t.Fatalf("explain %s: %v", c.name, err)
		}
		stats, _ := out["executionStats"].(bson.M)
		examined := fmt.Sprint(stats["totalDocsExamined"])
		var got int
		if _, err := fmt.Sscan(examined, &got); err != nil || got > 2*firstPage {
			t.Fatalf("%s: the server examined %s loads for a page of %d in a pool with 20 free proxies of 2,000", c.name, examined, firstPage)
		}
	}
}

func isFerretDB(t *testing.T, s *Store) bool {
	t.Helper()
	var info bson.M
	if err := s.db.RunCommand(context.Background(), bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err != nil {
		t.Fatalf("buildInfo: %v", err)
	}
	_, ok := info["ferretdbVersion"]
	return ok
}

// seedBoundedPool opens a store (with the command monitor, if any) on a
// fresh database and stores a pool of n exclusive proxies.
func seedBoundedPool(t *testing.T, mon *event.CommandMonitor, n int) (*Store, string, *pharox.Consumer) {
	t.Helper()
	db := mongotest.UniqueName("pxt_")
	opts := options.Client().ApplyURI(mongotest.DatabaseURL(t, db))
	if mon != nil {
		opts.SetMonitor(mon)
	}
	client, err := mongo.Connect(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Cleanup(func() {
		_ = client.Database(db).Drop(context.Background())
		_ = client.Disconnect(context.Background())
	})
	s, err := New(ctx, client.Database(db))
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.CreatePool(ctx, pharox.Pool{Name: "bounded"})
	if err != nil {
		t.Fatal(err)
	}
	one := 1
	ps := make([]pharox.Proxy, n)
	for i := range ps {
		ps[i] = pharox.Proxy{PoolID: p.ID, Host: fmt.Sprintf("10.%d.%d.%d", i/62500, i/250%250, i%250+1), Port: 1000 + i%50000,
			Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one}
	}
	for lo := 0; lo < n; lo += 1000 {
		if _, err := s.AddProxies(ctx, ps[lo:min(lo+1000, n)]); err != nil {
			t.Fatal(err)
		}
	}
	c, err := s.EnsureConsumer(ctx, "bounded")
	if err != nil {
		t.Fatal(err)
	}
	return s, p.Name, c
}

// fillAllBut leases every proxy of the pool but keep, writing what
// acquisitions write (a slot document per lease, the load's count) in
// bulk: acquiring them one by one would take minutes on FerretDB.
func fillAllBut(t *testing.T, s *Store, pool string, c *pharox.Consumer, keep int) {
	t.Helper()
	ctx := context.Background()
	pd, err := s.findPool(ctx, bson.D{{Key: "name", Value: pool}}, pool)
	if err != nil {
		t.Fatal(err)
	}
	var ds []proxyDoc
	if err := s.findAll(ctx, s.proxies, bson.D{{Key: "pool", Value: pd.ID}}, bson.D{{Key: "_id", Value: 1}}, &ds); err != nil {
		t.Fatal(err)
	}
	t0 := now()
	var slots []any
	var ids bson.A
	for i, d := range ds {
		if i%(len(ds)/keep) == len(ds)/keep/2 {
			continue // stays free
		}
		id := uuid.NewString()
		slots = append(slots, leaseDoc{ID: id, Pool: pd.ID, PoolName: pd.Name, Proxy: d.ID, Consumer: idString(c.ID), ConsumerName: c.Name,
			N: int64(0), Status: string(pharox.LeaseActive), AcquiredAt: t0, ExpiresAt: t0.Add(time.Hour)})
		ids = append(ids, d.ID)
	}
	if _, err := s.slots.InsertMany(ctx, slots); err != nil {
		t.Fatal(err)
	}
	if _, err := s.loads.UpdateMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: int64(1)}, {Key: "room", Value: int64(0)}}}}); err != nil {
		t.Fatal(err)
	}
	if st, err := s.GetPoolStats(ctx, pool); err != nil || st.AvailableProxies != keep {
		t.Fatalf("after filling: %+v, %v; want %d available proxies", st, err, keep)
	}
}

// TestLoadsOffAreRepaired: lease counts that are off (as a process dying
// between a slot's insert and its count's update would leave them) change
// LeastUsed's order, never whether a free proxy is found: a walk that
// finds nothing through the loads reads the pool and repairs them.
func TestLoadsOffAreRepaired(t *testing.T) {
	s, pool, consumer := seedBoundedPool(t, nil, 3)
	ctx := context.Background()
	// Every proxy looks full.
	if _, err := s.loads.UpdateMany(ctx, bson.D{}, bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: int64(1)}, {Key: "room", Value: int64(0)}}}}); err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: pool, ConsumerID: consumer.ID, ConsumerName: consumer.Name, Duration: time.Minute, Strategy: pharox.LeastUsed}
	l, err := s.AcquireLease(ctx, req)
	if err != nil {
		t.Fatalf("LeastUsed with every load off: %v; want a lease", err)
	}
	var ls []loadDoc
	if err := s.findAll(ctx, s.loads, bson.D{}, bson.D{{Key: "_id", Value: 1}}, &ls); err != nil {
		t.Fatal(err)
	}
	for _, d := range ls {
		want := int64(0)
		if d.ID == idString(l.ProxyID) {
			want = 1
		}
		if d.N != want || d.Room != 1-want {
			t.Fatalf("load of %s after the repair: %d leases, %d free; want %d, %d", d.ID, d.N, d.Room, want, 1-want)
		}
	}
	// Repaired, the loads serve the next acquisitions, and every free
	// proxy is found.
	for range 2 {
		if _, err := s.AcquireLease(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.AcquireLease(ctx, req); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("a fourth lease from 3 exclusive proxies: %v; want ErrNoProxyAvailable", err)
	}
}
