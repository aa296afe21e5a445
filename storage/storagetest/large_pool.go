package storagetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

var largePoolTests = []subtest{
	{name: "StrategiesAndFilters", fn: testLargePool},
}

// Attribute values of the large pool, spread by index so that every filter
// shape matches proxies all over the id order.
var (
	largeCountries = []string{"AR", "UY", "BR", "DE", "US", "FR", "JP"}
	largeProtocols = []pharox.Protocol{pharox.ProtocolHTTP, pharox.ProtocolHTTPS, pharox.ProtocolSOCKS4, pharox.ProtocolSOCKS5}
)

// largeBusyCountry and largeRareTag are held by busy proxies only, so a
// filter on them matches many proxies and no candidate.
const (
	largeBusyCountry = "ZZ"
	largeRareTag     = "rare"
)

// largeProxy describes proxy i of the large pool.
func largeProxy(base pharox.Proxy, i int) pharox.Proxy {
	p := base
	p.MaxConcurrency = ptrutil.Ptr(1)
	if i%97 == 0 {
		p.MaxConcurrency = ptrutil.Ptr(2)
	}
	switch i % 50 {
	case 7:
		p.Status = pharox.StatusInactive
	case 13:
		p.Status = pharox.StatusSlow
	}
	p.Country = largeCountries[i%len(largeCountries)]
	if i%1000 == 1 {
		p.Country = largeBusyCountry
	}
	p.City = fmt.Sprintf("%s-city-%d", p.Country, i/7%3)
	p.Source = fmt.Sprintf("src-%d", i%5)
	p.ISP = fmt.Sprintf("isp-%d", i%11)
	if i%17 != 0 {
		p.ASN = ptrutil.Ptr(64500 + i%13)
	}
	p.Protocol = largeProtocols[i%len(largeProtocols)]
	p.Tags = []string{fmt.Sprintf("t%d", i%3), fmt.Sprintf("u%d", i%4)}
	if i%1000 == 500 {
		p.Tags = append(p.Tags, largeRareTag)
	}
	if i%5 != 4 {
		p.Latitude = ptrutil.Ptr(-80 + float64(i*37%160) + 0.25)
		p.Longitude = ptrutil.Ptr(-175 + float64(i*53%350) + 0.5)
	}
	return p
}

// largeFree chooses the indexes of the proxies left with a free slot:
// a few dozen spread over the pool, some of them shared proxies.
func largeFree(n int) []int {
	busyOnly := func(i int) bool { return i%50 == 7 || i%1000 == 1 || i%1000 == 500 }
	var out []int
	const spread = 24
	for k := range spread {
		i := k*(n/spread) + 3 + k%7
		for busyOnly(i) {
			i++
		}
		out = append(out, i)
	}
	for _, i := range []int{97 * 3, 97 * 50, 97 * 101} {
		if i < n && !slices.Contains(out, i) {
			out = append(out, i)
		}
	}
	return out
}

// testLargePool stores a large pool, leases every slot but a few dozen,
// and then checks, for every strategy and filter shape, that the store
// hands out exactly the candidates the reference semantics select, in the
// reference order. It is where a store's indexes meet many busy proxies:
// a store that walks them is slow here, one whose indexes are wrong gives
// wrong answers.
func testLargePool(t *testing.T, f *fixture) {
	f.cfg.skipLargePool(t)
	n := f.cfg.largePool
	if n != DefaultLargePoolSize {
		t.Logf("large pool of %d proxies instead of %d: %s", n, DefaultLargePoolSize, f.cfg.largePoolReason)
	}
	pool := f.pool("large")
	in := make([]pharox.Proxy, n)
	for i := range in {
		in[i] = largeProxy(f.proxy(pool), i)
	}
	const batch = 1000
	stored := make([]*pharox.Proxy, 0, n)
	for lo := 0; lo < n; lo += batch {
		stored = append(stored, f.add(in[lo:min(lo+batch, n)]...)...)
	}
	free := largeFree(n)

	// Health: some free proxies checked (active or slow) at distinct times,
	// so that first_available's order is more than the id order.
	base := time.Now().UTC().Truncate(time.Millisecond).Add(-time.Hour)
	for k, i := range free {
		st := pharox.StatusActive
		switch k % 4 {
		case 0:
			continue // never checked
		case 1:
			st = pharox.StatusSlow
		}
		r := pharox.HealthCheckResult{ProxyID: stored[i].ID, Status: st, CheckedAt: base.Add(-time.Duration(k) * time.Minute)}
		if _, err := f.s.ApplyHealthCheckResult(f.ctx, r); err != nil {
			t.Fatalf("ApplyHealthCheckResult(proxy %d): %v", i, err)
		}
	}

	held := f.fillLargePool(n)
	want := 0
	for i, p := range in {
		if p.Status != pharox.StatusInactive {
			want += *in[i].MaxConcurrency
		}
	}
	if st := f.stats("large"); st.TotalLeases != want || st.AvailableProxies != 0 {
		t.Fatalf("after filling the pool: %d leases and %d available proxies, want %d and 0", st.TotalLeases, st.AvailableProxies, want)
	}
	for _, i := range free {
		f.release(held[stored[i].ID][0])
	}
	if st := f.stats("large"); st.AvailableProxies != len(free) {
		t.Fatalf("after freeing %d slots: %d available proxies, want %d", len(free), st.AvailableProxies, len(free))
	}

	// The reference model: the stored proxies as they are now.
	model, err := f.s.ListProxies(f.ctx, pool.ID)
	if err != nil {
		t.Fatalf("ListProxies(large): %v", err)
	}
	if len(model) != n {
		t.Fatalf("ListProxies(large) = %d proxies, want %d", len(model), n)
	}
	byID := make(map[uuid.UUID]*pharox.Proxy, n)
	for _, p := range model {
		byID[p.ID] = p
	}
	fp := make([]*pharox.Proxy, len(free))
	nm := names{}
	for k, i := range free {
		fp[k] = byID[stored[i].ID]
		nm[fp[k].ID] = fmt.Sprintf("free#%d(proxy %d)", k, i)
	}
	withCoords := func(skip int) *pharox.Proxy {
		for _, p := range fp {
			if p.Latitude != nil {
				if skip == 0 {
					return p
				}
				skip--
			}
		}
		t.Fatal("test bug: no free proxy with coordinates")
		return nil
	}
	withASN := fp[slices.IndexFunc(fp, func(p *pharox.Proxy) bool { return p.ASN != nil })]
	point, around := withCoords(0), withCoords(1)

	shapes := []struct {
		name    string
		filters *pharox.Filters
	}{
		{"none", nil},
		{"country", &pharox.Filters{Country: fp[0].Country}},
		{"country held by busy proxies only", &pharox.Filters{Country: largeBusyCountry}},
		{"city", &pharox.Filters{City: fp[1].City}},
		{"source", &pharox.Filters{Source: fp[2].Source}},
		{"isp", &pharox.Filters{ISP: fp[3].ISP}},
		{"one tag", &pharox.Filters{Tags: fp[4].Tags[:1]}},
		{"all tags", &pharox.Filters{Tags: fp[5].Tags}},
		{"tag of busy proxies only", &pharox.Filters{Tags: []string{largeRareTag}}},
		{"asn", &pharox.Filters{ASN: withASN.ASN}},
		{"protocol", &pharox.Filters{Protocol: fp[7].Protocol}},
		{"exact point", &pharox.Filters{Latitude: point.Latitude, Longitude: point.Longitude}},
		{"radius", &pharox.Filters{Latitude: around.Latitude, Longitude: around.Longitude, RadiusKM: ptrutil.Ptr(3000.0)}},
		{"fields AND", &pharox.Filters{Country: fp[8].Country, Protocol: fp[8].Protocol}},
		{"any_of", &pharox.Filters{AnyOf: []pharox.Filters{{Country: fp[9].Country}, {Source: fp[10].Source}}}},
		{"all_of", &pharox.Filters{AllOf: []pharox.Filters{{Source: fp[11].Source}, {Tags: fp[11].Tags[1:]}}}},
		{"none_of", &pharox.Filters{NoneOf: []pharox.Filters{{Country: fp[12].Country}, {Protocol: fp[13].Protocol}}}},
		{"nested", &pharox.Filters{AnyOf: []pharox.Filters{
			{AllOf: []pharox.Filters{{Country: fp[14].Country}, {NoneOf: []pharox.Filters{{Tags: []string{"t0"}}}}}},
			{ASN: withASN.ASN, Protocol: withASN.Protocol},
		}}},
		{"any_of of busy-only values", &pharox.Filters{AnyOf: []pharox.Filters{{Tags: []string{largeRareTag}}, {Country: largeBusyCountry}}}},
		{"none_of busy-only values", &pharox.Filters{NoneOf: []pharox.Filters{{Tags: []string{largeRareTag}}, {Country: largeBusyCountry}}}},
		{"none_of everything", &pharox.Filters{NoneOf: []pharox.Filters{{}}}},
	}

	lp := &largeCheck{f: f, model: model, nm: nm}
	for _, sh := range shapes {
		for _, st := range pharox.AllStrategies {
			lp.check(sh.name, sh.filters, st)
		}
	}
}

// fillLargePool leases every slot of the "large" pool with a few workers
// and returns the lease ids per proxy.
func (f *fixture) fillLargePool(n int) map[uuid.UUID][]uuid.UUID {
	f.t.Helper()
	req := f.req("large")
	req.Duration = time.Hour
	var (
		mu    sync.Mutex
		held  = make(map[uuid.UUID][]uuid.UUID, n)
		taken int
		errs  []error
	)
	limit := 2*n + 10 // every proxy has at most 2 slots
	take := func() bool {
		l, err := f.s.AcquireLease(f.ctx, req)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case errors.Is(err, pharox.ErrNoProxyAvailable):
			return false
		case err != nil:
			errs = append(errs, err)
			return false
		}
		held[l.ProxyID] = append(held[l.ProxyID], l.ID)
		taken++
		return taken < limit
	}
	// Sixteen callers at once: stores that serve concurrent calls with
	// one statement or script (PostgreSQL, Redis) fill the pool several
	// times faster than with a few.
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for take() {
			}
		})
	}
	wg.Wait()
	// A shared store may answer "none" to a worker while the last free
	// slots are locked by the others; finish serially.
	for take() {
	}
	if len(errs) > 0 {
		f.t.Fatalf("filling the large pool: %v", errs[0])
	}
	if taken >= limit {
		f.t.Fatalf("filling the large pool: AcquireLease kept succeeding after %d leases", taken)
	}
	return held
}

// largeCheck compares a store's choices on the large pool with the
// reference semantics.
type largeCheck struct {
	f     *fixture
	model []*pharox.Proxy
	nm    names
	// rrLast is the proxy the pool handed out last under round_robin.
	rrLast  uuid.UUID
	rrKnown bool
}

// candidates are the model's proxies that filters admit and can take a
// lease, in strategy st's order (by id for round_robin and random).
func (c *largeCheck) candidates(filters *pharox.Filters, st pharox.Strategy) []*pharox.Proxy {
	var out []*pharox.Proxy
	for _, p := range c.model {
		if p.Status.Leasable() && p.HasFreeSlot() && filters.Match(p) {
			out = append(out, p)
		}
	}
	switch st {
	case pharox.FirstAvailable:
		slices.SortFunc(out, pharox.CompareFirstAvailable)
	case pharox.LeastUsed:
		slices.SortFunc(out, pharox.CompareLeastUsed)
	default:
		slices.SortFunc(out, func(a, b *pharox.Proxy) int { return compareID(a.ID, b.ID) })
	}
	return out
}

// check drains the pool's free slots with filters and st, compares what it
// got with the reference, and frees the slots again. Every candidate has
// exactly one free slot, so one lease takes it out of the candidates and
// the reference order is the candidates' order at the start (rotated to
// the round-robin position for round_robin).
func (c *largeCheck) check(shape string, filters *pharox.Filters, st pharox.Strategy) {
	f, t := c.f, c.f.t
	t.Helper()
	want := c.candidates(filters, st)
	if st == pharox.RoundRobin && c.rrKnown && len(want) > 0 {
		at, _ := slices.BinarySearchFunc(want, c.rrLast, func(p *pharox.Proxy, id uuid.UUID) int {
			if compareID(p.ID, id) <= 0 {
				return -1
			}
			return 1
		})
		want = slices.Concat(want[at:], want[:at])
	}
	wantIDs := make([]uuid.UUID, len(want))
	for i, p := range want {
		wantIDs[i] = p.ID
	}
	what := fmt.Sprintf("large pool, filter %s, %s", shape, st)

	p, err := f.s.FindAvailableProxy(f.ctx, "large", filters, st)
	switch {
	case len(want) == 0:
		if !errors.Is(err, pharox.ErrNoProxyAvailable) {
			t.Fatalf("%s: FindAvailableProxy = %v, %v; want ErrNoProxyAvailable", what, leaseProxyOf(p), err)
		}
	case err != nil:
		t.Fatalf("%s: FindAvailableProxy: %v; want one of %v", what, err, c.nm.list(wantIDs))
	case st == pharox.Random || st == pharox.RoundRobin && !c.rrKnown:
		if !slices.Contains(wantIDs, p.ID) {
			t.Fatalf("%s: FindAvailableProxy = %s, want one of %v", what, c.nm.of(p.ID), c.nm.list(wantIDs))
		}
	case p.ID != wantIDs[0]:
		t.Fatalf("%s: FindAvailableProxy = %s, want %s", what, c.nm.of(p.ID), c.nm.of(wantIDs[0]))
	}

	req := f.req("large")
	req.Filters, req.Strategy = filters, st
	leases, err := f.drain(req, len(want)+1)
	if err != nil {
		t.Fatalf("%s: AcquireLease: %v", what, err)
	}
	got := make([]uuid.UUID, len(leases))
	for i, l := range leases {
		got[i] = l.ProxyID
	}
	f.releaseAll(leases)
	switch {
	case st == pharox.Random:
		slices.SortFunc(got, compareID)
		if !slices.Equal(got, sortedCopy(wantIDs)) {
			t.Fatalf("%s: leased %v, want exactly %v", what, c.nm.list(got), c.nm.list(wantIDs))
		}
	case st == pharox.RoundRobin && !c.rrKnown && len(got) > 0:
		// The first round-robin lease of a pool may start anywhere;
		// from there the order is fixed.
		if at := slices.Index(wantIDs, got[0]); at > 0 {
			wantIDs = slices.Concat(wantIDs[at:], wantIDs[:at])
		}
		fallthrough
	default:
		if !slices.Equal(got, wantIDs) {
			t.Fatalf("%s: leased in order %v, want %v", what, c.nm.list(got), c.nm.list(wantIDs))
		}
	}
	if st == pharox.RoundRobin && len(leases) > 0 {
		c.rrLast, c.rrKnown = leases[len(leases)-1].ProxyID, true
	}
}

func sortedCopy(ids []uuid.UUID) []uuid.UUID {
	out := slices.Clone(ids)
	slices.SortFunc(out, compareID)
	return out
}

func leaseProxyOf(p *pharox.Proxy) string {
	if p == nil {
		return "<nil>"
	}
	return p.ID.String()
}
