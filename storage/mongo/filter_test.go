package mongo

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
)

// TestFilterQueryMatchesReference checks the query filterQuery builds
// against pharox.Filters.Match, the reference semantics, on random proxies
// and random nested filters: the query returns every proxy Match accepts,
// and exactly those when filterQuery reports it exact.
func TestFilterQueryMatchesReference(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "filters"})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	in := make([]pharox.Proxy, 150)
	for i := range in {
		in[i] = storagetest.RandomProxy(r, pool.ID, i)
	}
	proxies, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	matchedSome, exact := 0, 0
	const filters = 150
	for i := range filters {
		f := storagetest.RandomFilter(r, proxies, 2)
		f.Normalize()
		if err := f.Validate(); err != nil {
			t.Fatalf("filter %d invalid: %v", i, err)
		}
		var want []string
		for _, p := range proxies {
			if f.Match(p) {
				want = append(want, idString(p.ID))
			}
		}
		slices.Sort(want)
		q, isExact := filterQuery(&f)
		cur, err := s.proxies.Find(ctx, append(bson.D{{Key: "pool", Value: idString(pool.ID)}}, q...),
			options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}).SetSort(bson.D{{Key: "_id", Value: 1}}))
		if err != nil {
			t.Fatalf("filter %d: %v\n%v", i, err, q)
		}
		var docs []struct {
			ID string `bson:"_id"`
		}
		if err := cur.All(ctx, &docs); err != nil {
			t.Fatal(err)
		}
		got := make([]string, len(docs))
		for k, d := range docs {
			got[k] = d.ID
		}
		for _, id := range want {
			if _, found := slices.BinarySearch(got, id); !found {
				t.Fatalf("filter %d %+v: the query misses proxy %s that Filters.Match accepts\n%v", i, f, id, q)
			}
		}
		if isExact {
			exact++
			if !slices.Equal(got, want) {
				t.Fatalf("filter %d %+v: exact query matched %d proxies, Filters.Match %d\n%v", i, f, len(got), len(want), q)
			}
		}
		if len(want) > 0 && len(want) < len(proxies) {
			matchedSome++
		}
	}
	// Guard against a generator that only ever matches all or nothing.
	if matchedSome < filters/4 || exact < filters/4 {
		t.Fatalf("%d of %d filters matched a proper subset, %d were exact: the test is not discriminating", matchedSome, filters, exact)
	}
}
