package sqlite

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

// TestPrefilterIsSuperset checks, on random proxies and random filters, that
// the SQL prefilter never drops a proxy Filters.Match accepts, and that it
// drops nothing else either when it claims to be exact.
func TestPrefilterIsSuperset(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "pre.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	countries := []string{"AR", "UY", "US", "FJ", ""}
	tags := []string{"res", "dc", "fast", "mobile"}
	in := make([]pharox.Proxy, 300)
	for i := range in {
		p := pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), Port: 1000 + i,
			Protocol: []pharox.Protocol{pharox.ProtocolHTTP, pharox.ProtocolSOCKS5}[rng.IntN(2)],
			Country:  countries[rng.IntN(len(countries))]}
		if rng.IntN(5) > 0 {
			// Cluster half the points near the poles and the antimeridian,
			// where bounding boxes are hardest.
			lat, lon := rng.Float64()*180-90, rng.Float64()*360-180
			if rng.IntN(2) == 0 {
				lat, lon = 80+rng.Float64()*10, 170+rng.Float64()*10
				if rng.IntN(2) == 0 {
					lon = -lon
				}
			}
			p.Latitude, p.Longitude = ptrutil.Ptr(lat), ptrutil.Ptr(lon)
		}
		for _, tg := range tags {
			if rng.IntN(3) == 0 {
				p.Tags = append(p.Tags, tg)
			}
		}
		if rng.IntN(4) == 0 {
			a := rng.IntN(3)
			p.ASN = &a
		}
		in[i] = p
	}
	stored, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[uuid.UUID]*pharox.Proxy{}
	for _, p := range stored {
		byID[p.ID] = p
	}
	randomFilter := func() pharox.Filters {
		var f pharox.Filters
		switch rng.IntN(6) {
		case 0:
			f.Country = countries[rng.IntN(len(countries)-1)]
		case 1:
			f.Tags = []string{tags[rng.IntN(len(tags))]}
		case 2:
			a := rng.IntN(3)
			f.ASN = &a
		case 3:
			f.Protocol = pharox.ProtocolSOCKS5
		}
		if rng.IntN(2) == 0 {
			p := stored[rng.IntN(len(stored))]
			if p.Latitude != nil {
				f.Latitude, f.Longitude = ptrutil.Ptr(*p.Latitude), ptrutil.Ptr(*p.Longitude)
				if rng.IntN(4) > 0 {
					f.RadiusKM = ptrutil.Ptr([]float64{0, 1, 300, 2000, 9000, 25000}[rng.IntN(6)])
				}
			}
		}
		return f
	}
	for i := range 400 {
		f := randomFilter()
		if rng.IntN(3) == 0 {
			f.AllOf = []pharox.Filters{randomFilter()}
		}
		if rng.IntN(4) == 0 {
			f.AnyOf = []pharox.Filters{randomFilter(), randomFilter()}
		}
		if rng.IntN(5) == 0 {
			f.NoneOf = []pharox.Filters{randomFilter()}
		}
		pre := prefilter(&f)
		rows, err := s.r.QueryContext(ctx, `SELECT id FROM proxies WHERE pool_id = ? AND has_free_slot = 1`+pre.where,
			append([]any{idArg(pool.ID)}, pre.args...)...)
		if err != nil {
			t.Fatalf("filter %d: %v\nSQL: %s", i, err, pre.where)
		}
		got := map[uuid.UUID]bool{}
		for rows.Next() {
			var id uuid.UUID
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			got[id] = true
		}
		rows.Close()
		for _, p := range stored {
			match := f.Match(byID[p.ID])
			if match && !got[p.ID] {
				t.Fatalf("filter %d %+v: SQL dropped matching proxy %s (%v,%v)\nSQL: %s", i, f, p.ID, deref(p.Latitude), deref(p.Longitude), pre.where)
			}
			if pre.exact && !match && got[p.ID] {
				t.Fatalf("filter %d %+v: exact SQL kept non-matching proxy %s\nSQL: %s", i, f, p.ID, pre.where)
			}
		}
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}
