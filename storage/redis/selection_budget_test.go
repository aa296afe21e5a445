package redis

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

// budgetPool creates pool name with n proxies of one lease each, all in
// Germany but the last, which is in France at (48.85, 2.35) and tagged
// "rare", and last in every strategy's order, and a consumer; it returns the proxies and a request.
func budgetPool(t *testing.T, s *Store, name string, n int) ([]*pharox.Proxy, pharox.AcquireRequest) {
	t.Helper()
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	var added []*pharox.Proxy
	for start := 0; start < n; start += 1000 {
		var ps []pharox.Proxy
		for i := start; i < min(start+1000, n); i++ {
			p := pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255), Port: 8080,
				Protocol: pharox.ProtocolHTTP, Country: "DE", MaxConcurrency: ptrutil.Ptr(1),
				Latitude: ptrutil.Ptr(52.52), Longitude: ptrutil.Ptr(13.40)}
			if i == n-1 {
				p.Country, p.Tags, p.Latitude, p.Longitude = "FR", []string{"rare"}, ptrutil.Ptr(48.85), ptrutil.Ptr(2.35)
				// The greatest id puts it last in every strategy's order
				// while no proxy has been checked or leased.
				p.ID = maxID
			}
			ps = append(ps, p)
		}
		got, err := s.AddProxies(ctx, ps)
		if err != nil {
			t.Fatal(err)
		}
		added = append(added, got...)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	return added, pharox.AcquireRequest{PoolName: name, ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Hour}
}

// TestSelectionBudget checks how an acquisition bounds its work in a pool
// of 5,000 free proxies where one matches: filter shapes an index narrows
// (an AnyOf whose alternatives all name an indexed field, a radius) find
// it; shapes no index narrows (only NoneOf, an AnyOf with an unindexed
// alternative) give up after the scan budget with ErrNoProxyAvailable
// saying the filter is too selective, alone and batched, rather than read
// every free proxy in one script; and once most proxies are busy, the
// same shapes find it again, their walk covering every free proxy.
func TestSelectionBudget(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	const n = 5000
	proxies, req := budgetPool(t, s, "p", n)
	rare := proxies[n-1]
	indexed := map[string]*pharox.Filters{
		"AnyOf of countries":   {AnyOf: []pharox.Filters{{Country: "FR"}, {Country: "JP"}}},
		"AnyOf of tag and ASN": {AnyOf: []pharox.Filters{{Tags: []string{"rare"}}, {ASN: ptrutil.Ptr(1)}}},
		"radius":               {Latitude: ptrutil.Ptr(48.85), Longitude: ptrutil.Ptr(2.35), RadiusKM: ptrutil.Ptr(10.0)},
		"AllOf with AnyOf":     {AllOf: []pharox.Filters{{AnyOf: []pharox.Filters{{City: "x"}, {Country: "FR"}}}}},
	}
	unindexed := map[string]*pharox.Filters{
		"NoneOf":                     {NoneOf: []pharox.Filters{{Country: "DE"}}},
		"AnyOf with a NoneOf option": {AnyOf: []pharox.Filters{{Country: "FR", Protocol: pharox.ProtocolSOCKS5}, {NoneOf: []pharox.Filters{{Country: "DE"}}}}},
	}
	for _, st := range pharox.AllStrategies {
		for what, f := range indexed {
			p, err := s.FindAvailableProxy(ctx, "p", f, st)
			if err != nil || p.ID != rare.ID {
				t.Errorf("%s, %s: FindAvailableProxy = %v, %v; want the one match", st, what, p, err)
			}
		}
		for what, f := range unindexed {
			// Random samples the free proxies, so it may come upon the
			// match; its lease is released again.
			_, err := s.FindAvailableProxy(ctx, "p", f, st)
			if !(st == pharox.Random && err == nil) && (!errors.Is(err, pharox.ErrNoProxyAvailable) || !strings.Contains(fmt.Sprint(err), "too selective")) {
				t.Errorf("%s, %s among %d free proxies: err = %v, want ErrNoProxyAvailable saying the filter is too selective", st, what, n, err)
			}
			r := req
			r.Strategy, r.Filters = st, f
			l, err := s.AcquireLease(ctx, r)
			if !(st == pharox.Random && err == nil) && !errors.Is(err, errTooSelective) {
				t.Errorf("%s, %s: AcquireLease err = %v, want %v", st, what, err, errTooSelective)
			}
			ls := []*pharox.Lease{l}
			sp, err := compileFilters(f)
			if err != nil {
				t.Fatal(err)
			}
			for i, res := range s.execAcquire(ctx, acquireKey{pool: "p", strategy: string(st), spec: sp}, []pharox.AcquireRequest{r, r}) {
				if !(st == pharox.Random && res.Err == nil) && !errors.Is(res.Err, errTooSelective) {
					t.Errorf("%s, %s: batched acquisition %d: err = %v, want %v", st, what, i, res.Err, errTooSelective)
				}
				ls = append(ls, res.Val)
			}
			for _, l := range ls {
				if l != nil {
					if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}

	// Lease every German proxy but the last 100: the walk then covers the
	// free proxies and finds the match whatever the shape.
	r := req
	r.Strategy, r.Filters = pharox.FirstAvailable, &pharox.Filters{Country: "DE"}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n-101; i += 8 {
				if _, err := s.AcquireLease(ctx, r); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	for _, st := range pharox.AllStrategies {
		for what, f := range unindexed {
			p, err := s.FindAvailableProxy(ctx, "p", f, st)
			if err != nil || p.ID != rare.ID {
				t.Errorf("%s, %s among 101 free proxies: FindAvailableProxy = %v, %v; want the one match", st, what, p, err)
			}
		}
	}
}
