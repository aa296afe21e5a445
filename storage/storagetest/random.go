package storagetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

// RandomProxy and RandomFilter generate inputs for a store's own check of
// its filter translation against [pharox.Filters.Match], the reference
// semantics: SQL stores compare the rows their generated WHERE clause
// selects with the proxies Match accepts.

// RandomProxy draws the i-th proxy of a pool from small domains so that random filters match
// some proxies and miss others; coordinates cluster near the antimeridian
// and the poles, where bounding boxes are easy to get wrong.
func RandomProxy(r *rand.Rand, poolID uuid.UUID, i int) pharox.Proxy {
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	p := pharox.Proxy{
		PoolID: poolID, Host: fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), Port: 1000 + i,
		Protocol: pharox.Protocol(pick("http", "https", "socks5")),
		Source:   pick("", "alpha", "beta"), Country: pick("", "US", "DE"), City: pick("", "Berlin", "Austin"),
		ISP: pick("", "isp1", "isp2"),
	}
	if r.IntN(3) > 0 {
		p.ASN = ptrutil.Ptr(r.IntN(3))
	}
	for _, t := range []string{"t1", "t2", "t3"} {
		if r.IntN(2) == 0 {
			p.Tags = append(p.Tags, t)
		}
	}
	switch r.IntN(5) {
	case 0: // no coordinates
	case 1: // near the antimeridian
		p.Latitude, p.Longitude = ptrutil.Ptr(r.Float64()*4-2), ptrutil.Ptr((179+r.Float64())*float64(1-2*r.IntN(2)))
	case 2: // near the north pole
		p.Latitude, p.Longitude = ptrutil.Ptr(85+r.Float64()*5), ptrutil.Ptr(r.Float64()*360-180)
	default:
		p.Latitude, p.Longitude = ptrutil.Ptr(r.Float64()*180-90), ptrutil.Ptr(r.Float64()*360-180)
	}
	return p
}

// RandomFilter draws a normalized filter, nested up to depth levels.
func RandomFilter(r *rand.Rand, proxies []*pharox.Proxy, depth int) pharox.Filters {
	var f pharox.Filters
	set := func() bool { return r.IntN(4) == 0 }
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	if set() {
		f.Source = pick("alpha", "beta")
	}
	if set() {
		f.Country = pick("US", "DE")
	}
	if set() {
		f.City = pick("Berlin", "Austin")
	}
	if set() {
		f.ISP = pick("isp1", "isp2")
	}
	if set() {
		f.ASN = ptrutil.Ptr(r.IntN(3))
	}
	if set() {
		f.Protocol = pharox.Protocol(pick("http", "https", "socks5"))
	}
	if set() {
		f.Tags = []string{pick("t1", "t2", "t3")}
		if r.IntN(2) == 0 {
			f.Tags = append(f.Tags, pick("t1", "t2", "t3"))
		}
	}
	if r.IntN(3) == 0 {
		// Centre on a proxy half of the time, so exact-point filters match.
		lat, lon := r.Float64()*180-90, r.Float64()*360-180
		if p := proxies[r.IntN(len(proxies))]; p.Latitude != nil && r.IntN(2) == 0 {
			lat, lon = *p.Latitude, *p.Longitude
		}
		if r.IntN(2) == 0 {
			lat, lon = []float64{0, 1, 88, -89.9}[r.IntN(4)], []float64{179.9, -179.9, 0}[r.IntN(3)]
		}
		f.Latitude, f.Longitude = &lat, &lon
		if r.IntN(4) > 0 {
			f.RadiusKM = ptrutil.Ptr([]float64{0, 50, 150, 300, 1500, 8000, 25000}[r.IntN(7)])
		}
	}
	if depth > 0 {
		for range r.IntN(3) {
			switch r.IntN(3) {
			case 0:
				f.AllOf = append(f.AllOf, RandomFilter(r, proxies, depth-1))
			case 1:
				f.AnyOf = append(f.AnyOf, RandomFilter(r, proxies, depth-1))
			default:
				f.NoneOf = append(f.NoneOf, RandomFilter(r, proxies, depth-1))
			}
		}
	}
	return f
}

// CheckFilterTranslation is the whole check of a store's filter
// translation: it stores 300 random proxies (RandomProxy) in a new pool of
// s, and for 800 random nested filters (RandomFilter) compares the ids
// match returns, the proxies of the pool the store's translation of the
// filters selects, with the ones [pharox.Filters.Match] accepts. match
// gets the pool's id and the normalized filters and returns the ids in
// any order. The check fails if too few filters match a proper subset of
// the pool, so a generator that only matches all or nothing shows.
func CheckFilterTranslation(t *testing.T, s pharox.Storage, match func(ctx context.Context, poolID uuid.UUID, f *pharox.Filters) ([]uuid.UUID, error)) {
	t.Helper()
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "filter-translation"})
	if err != nil {
		t.Fatalf("CreatePool: %v", err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	in := make([]pharox.Proxy, 300)
	for i := range in {
		in[i] = RandomProxy(r, pool.ID, i)
	}
	proxies, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatalf("AddProxies: %v", err)
	}
	matchedSome := 0
	for i := range 800 {
		f := RandomFilter(r, proxies, 2)
		f.Normalize()
		if err := f.Validate(); err != nil {
			t.Fatalf("filter %d invalid: %v", i, err)
		}
		var want []uuid.UUID
		for _, p := range proxies {
			if f.Match(p) {
				want = append(want, p.ID)
			}
		}
		got, err := match(ctx, pool.ID, &f)
		if err != nil {
			t.Fatalf("filter %d %+v: %v", i, f, err)
		}
		slices.SortFunc(want, compareID)
		got = slices.Clone(got)
		slices.SortFunc(got, compareID)
		if !slices.Equal(got, want) {
			t.Fatalf("filter %d %+v: the store's translation matched %d proxies, Filters.Match %d", i, f, len(got), len(want))
		}
		if len(want) > 0 && len(want) < len(proxies) {
			matchedSome++
		}
	}
	if matchedSome < 200 {
		t.Fatalf("only %d of 800 filters matched a proper subset: the check is not discriminating", matchedSome)
	}
}
