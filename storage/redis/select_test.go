package redis

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

// TestSelectionMatchesReference checks candidate selection on a pool large
// enough to take every path of select.lua (direct set intersection, walking
// in strategy order, and the fallback to SINTER, GEOSEARCH or all free
// proxies after an unsuccessful walk) against the root package's reference
// semantics: Filters.Match, Proxy.Leasable and the strategy comparators.
func TestSelectionMatchesReference(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	rng := rand.New(rand.NewPCG(1, 2))
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "big"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1200
	countries := []string{"US", "US", "US", "US", "US", "DE", "DE", "DE", "BR", "BR"}
	protocols := []pharox.Protocol{pharox.ProtocolHTTP, pharox.ProtocolHTTPS, pharox.ProtocolSOCKS4, pharox.ProtocolSOCKS5}
	tagSet := []string{"a", "b", "c", "d"}
	in := make([]pharox.Proxy, n)
	for i := range in {
		p := pharox.Proxy{
			PoolID: pool.ID, Host: fmt.Sprintf("10.1.%d.%d", i/200, i%200+1), Port: 3128,
			Protocol: protocols[rng.IntN(4)],
			Country:  countries[rng.IntN(len(countries))],
			City:     fmt.Sprintf("city%d", rng.IntN(40)),
			Source:   fmt.Sprintf("src%d", rng.IntN(3)),
			ISP:      fmt.Sprintf("isp%d", rng.IntN(5)),
		}
		if i%97 == 0 {
			p.Country = "IS" // rare
		}
		if rng.IntN(4) > 0 {
			p.ASN = ptrutil.Ptr(rng.IntN(5))
		}
		for _, tg := range tagSet {
			if rng.IntN(2) == 0 {
				p.Tags = append(p.Tags, tg)
			}
		}
		switch r := rng.IntN(20); {
		case r == 0: // beyond the GEO index's range
			p.Latitude, p.Longitude = ptrutil.Ptr(86+rng.Float64()*4), ptrutil.Ptr(rng.Float64()*360-180)
		case r < 17:
			p.Latitude, p.Longitude = ptrutil.Ptr(rng.Float64()*120-60), ptrutil.Ptr(rng.Float64()*360-180)
		}
		if m := rng.IntN(4); m > 0 {
			p.MaxConcurrency = ptrutil.Ptr(m)
		}
		in[i] = p
	}
	added, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	// Health: statuses and distinct check times for most proxies.
	base := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	statuses := []pharox.ProxyStatus{pharox.StatusActive, pharox.StatusActive, pharox.StatusActive,
		pharox.StatusSlow, pharox.StatusSlow, pharox.StatusInactive, pharox.StatusBanned}
	for i, p := range added {
		if i%5 == 4 {
			continue // never checked
		}
		r := pharox.HealthCheckResult{ProxyID: p.ID, Status: statuses[rng.IntN(len(statuses))],
			CheckedAt: base.Add(time.Duration(rng.IntN(3600000)) * time.Millisecond)}
		if _, err := s.ApplyHealthCheckResult(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	consumer, err := s.EnsureConsumer(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: "big", ConsumerID: consumer.ID, Duration: time.Hour, Strategy: pharox.Random}
	for range 500 { // load proxies unevenly; fills many small ones
		if _, err := s.AcquireLease(ctx, req); err != nil {
			t.Fatal(err)
		}
	}

	list, err := s.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	randomFilter := func() *pharox.Filters { return genFilter(rng, list, 0) }
	check := func(f *pharox.Filters, st pharox.Strategy, cursor *uuid.UUID) {
		t.Helper()
		var cands []*pharox.Proxy
		for _, p := range list {
			if p.Leasable() && f.Match(p) {
				cands = append(cands, p)
			}
		}
		got, err := s.FindAvailableProxy(ctx, "big", f, st)
		if len(cands) == 0 {
			if !errors.Is(err, pharox.ErrNoProxyAvailable) {
				t.Fatalf("%s %s: got %v, %v; want ErrNoProxyAvailable", st, describe(f), got, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%s %s: %v; want one of %d candidates", st, describe(f), err, len(cands))
		}
		var want *pharox.Proxy
		switch st {
		case pharox.FirstAvailable:
			want = slices.MinFunc(cands, pharox.CompareFirstAvailable)
		case pharox.LeastUsed:
			want = slices.MinFunc(cands, pharox.CompareLeastUsed)
		case pharox.RoundRobin:
			slices.SortFunc(cands, func(a, b *pharox.Proxy) int { return compareUUID(a.ID, b.ID) })
			want = cands[0]
			for _, c := range cands {
				if compareUUID(c.ID, *cursor) > 0 {
					want = c
					break
				}
			}
		default:
			if !slices.ContainsFunc(cands, func(p *pharox.Proxy) bool { return p.ID == got.ID }) {
				t.Fatalf("random %s: got %s, not a candidate", describe(f), got.ID)
			}
			return
		}
		if got.ID != want.ID {
			t.Fatalf("%s %s: got %s, want %s (%d candidates)", st, describe(f), got.ID, want.ID, len(cands))
		}
	}
	found, none := 0, 0
	for i := range 300 {
		f := randomFilter()
		if i%3 == 0 {
			f = nil
			if i%2 == 0 {
				f = &pharox.Filters{Country: "US"}
			}
		}
		for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed, pharox.Random} {
			check(f, st, nil)
		}
		if i%10 == 0 { // move the round-robin cursor by leasing, then check from it
			l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "big", ConsumerID: consumer.ID,
				Duration: time.Hour, Strategy: pharox.RoundRobin, Filters: f})
			if err == nil {
				if list, err = s.ListProxies(ctx, pool.ID); err != nil {
					t.Fatal(err)
				}
				check(randomFilter(), pharox.RoundRobin, &l.ProxyID)
				check(nil, pharox.RoundRobin, &l.ProxyID)
			} else if !errors.Is(err, pharox.ErrNoProxyAvailable) {
				t.Fatal(err)
			}
		}
		if _, err := s.FindAvailableProxy(ctx, "big", f, pharox.FirstAvailable); err == nil {
			found++
		} else {
			none++
		}
	}
	t.Logf("%d filters with a match, %d without", found, none)
	if found < 50 || none < 20 {
		t.Errorf("filter generator is unbalanced: %d with a match, %d without", found, none)
	}
}

func compareUUID(a, b uuid.UUID) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

func describe(f *pharox.Filters) string {
	if f == nil {
		return "<no filter>"
	}
	b, _ := json.Marshal(f)
	return string(b)
}

// genFilter returns a random filter mixing every kind of condition; points
// come from real proxies so that point and radius filters can match.
func genFilter(rng *rand.Rand, list []*pharox.Proxy, depth int) *pharox.Filters {
	f := &pharox.Filters{}
	pick := func() *pharox.Proxy { return list[rng.IntN(len(list))] }
	for range 1 + rng.IntN(3) {
		switch rng.IntN(12) {
		case 0:
			f.Country = []string{"US", "DE", "BR", "IS", "FR"}[rng.IntN(5)]
		case 1:
			f.City = fmt.Sprintf("city%d", rng.IntN(45))
		case 2:
			f.Protocol = []pharox.Protocol{pharox.ProtocolHTTP, pharox.ProtocolSOCKS5}[rng.IntN(2)]
		case 3:
			f.Tags = append(f.Tags, []string{"a", "b", "c", "d"}[rng.IntN(4)])
		case 4:
			f.ASN = ptrutil.Ptr(rng.IntN(6))
		case 5:
			f.Source = fmt.Sprintf("src%d", rng.IntN(3))
		case 6:
			f.ISP = fmt.Sprintf("isp%d", rng.IntN(5))
		case 7:
			// Near the pole: the radius reaches proxies beyond GEO's range.
			f.Latitude, f.Longitude = ptrutil.Ptr(80+rng.Float64()*5), ptrutil.Ptr(rng.Float64()*360-180)
			f.RadiusKM = ptrutil.Ptr([]float64{300, 800, 1500}[rng.IntN(3)])
		case 8:
			p := pick()
			if p.Latitude != nil {
				f.Latitude, f.Longitude = ptrutil.Ptr(*p.Latitude), ptrutil.Ptr(*p.Longitude)
				if rng.IntN(4) > 0 {
					f.RadiusKM = ptrutil.Ptr([]float64{50, 500, 2000, 8000}[rng.IntN(4)])
				}
			}
		case 9, 10:
			if depth < 2 {
				f.AnyOf = append(f.AnyOf, *genFilter(rng, list, depth+1), *genFilter(rng, list, depth+1))
			}
		default:
			if depth < 2 {
				f.NoneOf = append(f.NoneOf, *genFilter(rng, list, depth+1))
				if rng.IntN(2) == 0 {
					f.AllOf = append(f.AllOf, *genFilter(rng, list, depth+1))
				}
			}
		}
	}
	return f
}
