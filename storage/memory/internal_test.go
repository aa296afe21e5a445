package memory

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// fakeClock is a settable clock for WithClock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func intp(n int) *int { return &n }

// checkInvariants recomputes everything the store keeps incrementally and
// compares. It reads internals without the lock: call it only while no other
// goroutine uses the store.
func checkInvariants(t *testing.T, s *Store) {
	t.Helper()
	active := map[uuid.UUID]int{}
	free := map[uint32]bool{}
	for _, slot := range s.freeSlots {
		if free[slot] {
			t.Fatalf("slot %d free twice", slot)
		}
		free[slot] = true
	}
	endedLive := 0
	for i, ls := range s.slots {
		if ls.slot != uint32(i) {
			t.Fatalf("record at %d claims slot %d", i, ls.slot)
		}
		if !ls.live {
			if !free[ls.slot] || ls.heapIdx != -1 {
				t.Fatalf("dead record %d not free (free=%v heap=%d)", i, free[ls.slot], ls.heapIdx)
			}
			continue
		}
		if free[ls.slot] {
			t.Fatalf("live record %d on the free list", i)
		}
		if s.lookup(ls.l.ID) != ls && ls.visible() {
			t.Fatalf("lease %s not found by its own id", ls.l.ID)
		}
		if ls.l.Status == pharox.LeaseActive {
			active[ls.l.ProxyID]++
			if ls.heapIdx < 0 || ls.heapIdx >= len(s.expiry) || s.expiry[ls.heapIdx].ls != ls ||
				s.expiry[ls.heapIdx].expires != ls.l.ExpiresAt.UnixMicro() {
				t.Fatalf("active lease %s not at its heap position %d", ls.l.ID, ls.heapIdx)
			}
		} else {
			endedLive++
			if ls.heapIdx != -1 {
				t.Fatalf("ended lease %s still in heap", ls.l.ID)
			}
		}
	}
	for i, e := range s.expiry {
		if !e.ls.live || e.ls.l.Status != pharox.LeaseActive {
			t.Fatalf("heap entry %d is not a live active lease", i)
		}
		if i > 0 && s.expiry[(i-1)/2].expires > e.expires {
			t.Fatalf("heap order broken at %d", i)
		}
	}
	if s.ended.n > s.retention || s.ended.n != endedLive {
		t.Fatalf("ended ring holds %d (retention %d), %d live ended records", s.ended.n, s.retention, endedLive)
	}
	for i := range s.ended.n {
		if ls := s.ended.buf[(s.ended.head+i)%len(s.ended.buf)]; !ls.live || ls.l.Status == pharox.LeaseActive {
			t.Fatalf("ring entry %d is not a live ended lease", i)
		}
	}
	for id, ps := range s.proxies {
		if ps.deleted || ps.pool.proxies[id] != ps {
			t.Fatalf("proxy %s is not in its pool", id)
		}
		if int(ps.idx) >= len(s.table) || s.table[ps.idx] != ps {
			t.Fatalf("proxy %s is not at its table index %d", id, ps.idx)
		}
	}
	holes := 0
	for _, ps := range s.table {
		if ps == nil {
			holes++
		}
	}
	if holes != len(s.freeIdx) || len(s.table)-holes != len(s.proxies) {
		t.Fatalf("proxy table: %d entries, %d holes, %d free indexes, %d proxies", len(s.table), holes, len(s.freeIdx), len(s.proxies))
	}
	for _, pl := range s.pools {
		var byStatus [4]int
		available, leased, leases := 0, 0, 0
		members := map[string]int{}
		for id, ps := range pl.proxies {
			if s.proxies[id] != ps {
				t.Fatalf("pool proxy %s missing from store", id)
			}
			if got := active[id]; got != ps.p.CurrentLeases {
				t.Fatalf("proxy %s: CurrentLeases %d, active leases %d", id, ps.p.CurrentLeases, got)
			}
			if ps.p.MaxConcurrency != nil && ps.p.CurrentLeases > *ps.p.MaxConcurrency {
				t.Fatalf("proxy %s over-leased: %d > %d", id, ps.p.CurrentLeases, *ps.p.MaxConcurrency)
			}
			if ps.indexed != (ps.p.Status.Leasable() && ps.p.HasFreeSlot()) {
				t.Fatalf("proxy %s: indexed=%v but leasable=%v", id, ps.indexed, ps.p.Leasable())
			}
			want := *ps
			want.refreshKeys()
			if want.idHi != ps.idHi || want.idLo != ps.idLo || want.rank != ps.rank || want.checked != ps.checked ||
				want.checkedSec != ps.checkedSec || want.checkedNsec != ps.checkedNsec {
				t.Fatalf("proxy %s: stale sort keys", id)
			}
			byStatus[ps.rank]++
			if ps.indexed {
				available++
			}
			if ps.p.CurrentLeases > 0 {
				leased++
			}
			leases += ps.p.CurrentLeases
			if ps.p.Country != "" {
				members[ps.p.Country]++
				if ps.cset != pl.byCountry[ps.p.Country] {
					t.Fatalf("proxy %s: stale country set", id)
				}
			}
		}
		if byStatus != pl.byStatus || available != pl.available || leased != pl.leased || leases != pl.leases {
			t.Fatalf("pool %s counters: have %v/%d/%d/%d, want %v/%d/%d/%d", pl.pool.Name,
				pl.byStatus, pl.available, pl.leased, pl.leases, byStatus, available, leased, leases)
		}
		if len(members) != len(pl.byCountry) {
			t.Fatalf("pool %s: %d country sets for %d countries", pl.pool.Name, len(pl.byCountry), len(members))
		}
		checkSet(t, s, pl, &pl.all)
		for c, x := range pl.byCountry {
			if x.members != members[c] || x.country != c {
				t.Fatalf("country set %s: members %d, want %d", c, x.members, members[c])
			}
			checkSet(t, s, pl, x)
		}
	}
}

// checkSet verifies that every enabled structure of x holds exactly the
// indexed proxies of its scope, in the reference order.
func checkSet(t *testing.T, s *Store, pl *poolState, x *indexSet) {
	t.Helper()
	var scope, want []*proxyState
	for _, ps := range pl.proxies {
		if x.country == "" || ps.p.Country == x.country {
			scope = append(scope, ps)
			if ps.indexed {
				want = append(want, ps)
			}
		}
	}
	// checkTree verifies a tree's items: inline keys current, in the
	// reference order, each proxy once, exactly the leasable proxies, and
	// (for FirstAvailable and RoundRobin) membership flags that agree.
	checkTree := func(name string, got []*proxyState, staleKeys bool, cmp func(a, b *pharox.Proxy) int, flag func(*proxyState) *bool) {
		t.Helper()
		if staleKeys {
			t.Fatalf("set %q %s: an item's inline keys are out of date", x.country, name)
		}
		for i := 1; i < len(got); i++ {
			if cmp(&got[i-1].p, &got[i].p) >= 0 {
				t.Fatalf("set %q %s: items %d and %d out of reference order", x.country, name, i-1, i)
			}
		}
		present := map[*proxyState]bool{}
		for _, ps := range got {
			if present[ps] || ps.deleted {
				t.Fatalf("set %q %s: proxy %s held twice or after deletion", x.country, name, ps.p.ID)
			}
			present[ps] = true
		}
		for _, ps := range want {
			if !present[ps] {
				t.Fatalf("set %q %s: leasable proxy %s missing", x.country, name, ps.p.ID)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("set %q %s: %d items, want exactly the %d leasable proxies", x.country, name, len(got), len(want))
		}
		if flag == nil {
			return
		}
		for _, ps := range scope {
			if *flag(ps) != present[ps] {
				t.Fatalf("set %q %s: proxy %s flag %v, present %v", x.country, name, ps.p.ID, *flag(ps), present[ps])
			}
		}
	}
	if x.fa != nil {
		var got []*proxyState
		stale := false
		x.fa.Ascend(func(it faItem) bool {
			got = append(got, s.table[it.idx])
			stale = stale || it != s.table[it.idx].faItem()
			return true
		})
		checkTree("first_available", got, stale, pharox.CompareFirstAvailable, func(ps *proxyState) *bool { return &ps.inFA[x.slot] })
	} else {
		for _, ps := range scope {
			if ps.inFA[x.slot] {
				t.Fatalf("set %q: proxy %s flagged in a first_available tree that does not exist", x.country, ps.p.ID)
			}
		}
	}
	if x.lu != nil {
		var got []*proxyState
		stale := false
		x.lu.Ascend(func(it luItem) bool {
			got = append(got, s.table[it.idx])
			stale = stale || it != s.table[it.idx].luItem()
			return true
		})
		checkTree("least_used", got, stale, pharox.CompareLeastUsed, nil)
	}
	if x.rr != nil {
		var got []*proxyState
		stale := false
		x.rr.Ascend(func(it idItem) bool {
			got = append(got, s.table[it.idx])
			stale = stale || it != s.table[it.idx].idItem()
			return true
		})
		checkTree("round_robin", got, stale, func(a, b *pharox.Proxy) int { return compareUUID(a.ID, b.ID) },
			func(ps *proxyState) *bool { return &ps.inRR[x.slot] })
	} else {
		for _, ps := range scope {
			if ps.inRR[x.slot] {
				t.Fatalf("set %q: proxy %s flagged in a round_robin tree that does not exist", x.country, ps.p.ID)
			}
		}
	}
	if x.rndOn {
		if len(x.rnd) != len(want) {
			t.Fatalf("set %q random: %d members, want %d", x.country, len(x.rnd), len(want))
		}
		for i, ps := range x.rnd {
			if ps.rndPos[x.slot] != i || !ps.indexed {
				t.Fatalf("set %q random: bad member at %d", x.country, i)
			}
		}
	}
}

func TestSortKeysMatchReferenceComparators(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var states []*proxyState
	for range 300 {
		ps := &proxyState{}
		ps.p.ID = newID()
		if r.IntN(3) == 0 {
			ps.p.ID[0] = 7 // share the high bytes to exercise idLo
		}
		ps.p.Status = pharox.AllProxyStatuses[r.IntN(2)]
		ps.p.CurrentLeases = r.IntN(3)
		if r.IntN(4) > 0 {
			at := base.Add(time.Duration(r.IntN(5))*time.Second + time.Duration(r.IntN(3))*time.Nanosecond)
			ps.p.CheckedAt = &at
		}
		ps.refreshKeys()
		states = append(states, ps)
	}
	sign := func(n int) int { return min(max(n, -1), 1) }
	for _, a := range states {
		for _, b := range states {
			wantFA := sign(pharox.CompareFirstAvailable(&a.p, &b.p))
			gotFA := 0
			if lessFirstAvailable(a.faItem(), b.faItem()) {
				gotFA = -1
			} else if lessFirstAvailable(b.faItem(), a.faItem()) {
				gotFA = 1
			}
			if gotFA != wantFA {
				t.Fatalf("first_available: got %d, reference %d", gotFA, wantFA)
			}
			wantLU := sign(pharox.CompareLeastUsed(&a.p, &b.p))
			gotLU := 0
			if lessLeastUsed(a.luItem(), b.luItem()) {
				gotLU = -1
			} else if lessLeastUsed(b.luItem(), a.luItem()) {
				gotLU = 1
			}
			if gotLU != wantLU {
				t.Fatalf("least_used: got %d, reference %d", gotLU, wantLU)
			}
		}
	}
}

// model drives a store with random operations and checks each acquisition
// against a brute-force reference choice, and the indexes after every step.
type model struct {
	t        *testing.T
	s        *Store
	clock    *fakeClock
	r        *rand.Rand
	ctx      context.Context
	pools    []*pharox.Pool
	consumer *pharox.Consumer
	active   []uuid.UUID
	ended    []uuid.UUID
	// hits counts successful acquisitions per strategy, and "sticky" for
	// session hits, so the test can show it exercised each path.
	hits map[string]int
}

var countries = []string{"US", "DE", "BR", ""}

func (m *model) addProxies(pool *pharox.Pool, n int) {
	var in []pharox.Proxy
	for range n {
		p := pharox.Proxy{
			PoolID:   pool.ID,
			Host:     fmt.Sprintf("10.%d.%d.%d", m.r.IntN(256), m.r.IntN(256), m.r.IntN(256)),
			Port:     1000 + m.r.IntN(60000),
			Protocol: pharox.ProtocolHTTP,
			Country:  countries[m.r.IntN(len(countries))],
			Status:   pharox.AllProxyStatuses[m.r.IntN(4)],
		}
		if m.r.IntN(2) == 0 {
			p.Protocol = pharox.ProtocolSOCKS5
		}
		if m.r.IntN(4) > 0 {
			p.MaxConcurrency = intp(1 + m.r.IntN(3))
		}
		in = append(in, p)
	}
	if _, err := m.s.AddProxies(m.ctx, in); err != nil && !errors.Is(err, pharox.ErrAlreadyExists) {
		m.t.Fatal(err)
	}
}

func (m *model) randomFilters() *pharox.Filters {
	switch m.r.IntN(6) {
	case 0:
		return &pharox.Filters{Country: countries[m.r.IntN(3)]}
	case 1:
		return &pharox.Filters{Protocol: pharox.ProtocolSOCKS5}
	case 2:
		return &pharox.Filters{Country: countries[m.r.IntN(3)], Protocol: pharox.ProtocolHTTP}
	case 3:
		return &pharox.Filters{Predicate: func(p *pharox.Proxy) bool { return p.Port%2 == 0 }}
	case 4:
		return &pharox.Filters{Country: "ZZ"}
	}
	return nil
}

// expected lists the candidates and, for deterministic strategies, the
// proxy the store must choose.
func (m *model) expected(pl *poolState, f *pharox.Filters, st pharox.Strategy) (cands []*pharox.Proxy, want *pharox.Proxy) {
	for _, ps := range pl.proxies {
		if ps.p.Leasable() && f.Match(ps.p.Clone()) {
			cands = append(cands, &ps.p)
		}
	}
	if len(cands) == 0 {
		return nil, nil
	}
	switch st {
	case pharox.FirstAvailable:
		want = slices.MinFunc(cands, pharox.CompareFirstAvailable)
	case pharox.LeastUsed:
		want = slices.MinFunc(cands, pharox.CompareLeastUsed)
	case pharox.RoundRobin:
		byID := slices.Clone(cands)
		slices.SortFunc(byID, func(a, b *pharox.Proxy) int { return compareUUID(a.ID, b.ID) })
		want = byID[0]
		if pl.rrSet {
			for _, p := range byID {
				ps := pl.proxies[p.ID]
				if lessID(pl.rrCursor, ps.idItem()) {
					want = p
					break
				}
			}
		}
	}
	return cands, want
}

func (m *model) acquire() {
	pool := m.pools[m.r.IntN(len(m.pools))]
	pl := m.s.poolNames[pool.Name]
	f := m.randomFilters()
	st := pharox.AllStrategies[m.r.IntN(4)]
	req := pharox.AcquireRequest{
		PoolName: pool.Name, ConsumerID: m.consumer.ID, Duration: time.Duration(1+m.r.IntN(20)) * time.Second,
		Filters: f, Strategy: st,
	}
	if m.r.IntN(3) == 0 {
		req.SessionKey = fmt.Sprintf("s%d", m.r.IntN(4))
		req.SessionTTL = time.Duration(1+m.r.IntN(10)) * time.Second
	}
	// Reclaim first, as the store will, so the reference sees the same state.
	m.s.reap(m.clock.Now())
	cands, want := m.expected(pl, f, st)
	var sticky *pharox.Proxy
	if b, ok := pl.sessions[req.SessionKey]; ok && req.SessionKey != "" && b.expires > m.clock.Now().UnixMicro() &&
		slices.Contains(cands, &b.proxy.p) {
		sticky = &b.proxy.p
	}
	lease, err := m.s.AcquireLease(m.ctx, req)
	if len(cands) == 0 {
		if !errors.Is(err, pharox.ErrNoProxyAvailable) {
			m.t.Fatalf("no candidates: got lease %v, err %v", lease, err)
		}
		return
	}
	if err != nil {
		m.t.Fatalf("acquire %s %+v: %v (%d candidates)", st, f, err, len(cands))
	}
	m.hits[string(st)]++
	switch {
	case sticky != nil:
		m.hits["sticky"]++
		if lease.ProxyID != sticky.ID {
			m.t.Fatalf("sticky session %q: got proxy %s, bound to %s", req.SessionKey, lease.ProxyID, sticky.ID)
		}
	case want != nil:
		if lease.ProxyID != want.ID {
			m.t.Fatalf("%s: got proxy %s, reference chooses %s", st, lease.ProxyID, want.ID)
		}
	default:
		if !slices.ContainsFunc(cands, func(p *pharox.Proxy) bool { return p.ID == lease.ProxyID }) {
			m.t.Fatalf("%s: chose %s, not a candidate", st, lease.ProxyID)
		}
	}
	if lease.Proxy == nil || lease.Proxy.ID != lease.ProxyID || lease.Proxy.CurrentLeases != m.s.proxies[lease.ProxyID].p.CurrentLeases {
		m.t.Fatalf("lease snapshot does not show the counted slot")
	}
	m.active = append(m.active, lease.ID)
}

func (m *model) step() {
	ctx := m.ctx
	switch op := m.r.IntN(20); {
	case op < 8:
		m.acquire()
	case op < 12:
		if len(m.active) == 0 {
			return
		}
		i := m.r.IntN(len(m.active))
		id := m.active[i]
		m.active = slices.Delete(m.active, i, i+1)
		m.s.reap(m.clock.Now())
		want := m.wantErr(id)
		if _, err := m.s.ReleaseLease(ctx, id, nil); !errors.Is(err, want) {
			m.t.Fatalf("release: %v, want %v", err, want)
		}
		m.ended = append(m.ended, id)
	case op < 13:
		if len(m.active) > 0 {
			id := m.active[m.r.IntN(len(m.active))]
			m.s.reap(m.clock.Now())
			want := m.wantErr(id)
			if _, err := m.s.RenewLease(ctx, id, time.Duration(1+m.r.IntN(10))*time.Second); !errors.Is(err, want) {
				m.t.Fatalf("renew: %v, want %v", err, want)
			}
		}
	case op < 15:
		m.clock.Advance(time.Duration(m.r.IntN(3000)) * time.Millisecond)
	case op < 17:
		if id, ok := m.randomProxy(); ok {
			r := pharox.HealthCheckResult{
				ProxyID: id, Status: pharox.AllProxyStatuses[m.r.IntN(4)], Latency: time.Millisecond,
				CheckedAt: m.clock.Now().Add(-time.Duration(m.r.IntN(5000)) * time.Millisecond), FailureThreshold: m.r.IntN(3),
			}
			if _, err := m.s.ApplyHealthCheckResult(ctx, r); err != nil {
				m.t.Fatalf("health: %v", err)
			}
		}
	case op < 18:
		if id, ok := m.randomProxy(); ok {
			if _, err := m.s.SetProxyStatus(ctx, id, pharox.AllProxyStatuses[m.r.IntN(4)]); err != nil {
				m.t.Fatalf("set status: %v", err)
			}
		}
	case op < 19:
		if id, ok := m.randomProxy(); ok {
			err := m.s.DeleteProxy(ctx, id)
			if err != nil && !errors.Is(err, pharox.ErrInUse) {
				m.t.Fatalf("delete proxy: %v", err)
			}
		}
	default:
		m.addProxies(m.pools[m.r.IntN(len(m.pools))], 1+m.r.IntN(3))
	}
}

// wantErr is the error releasing or renewing id must give: none while it is
// active, ErrLeaseNotActive once it ended, ErrLeaseNotFound once retention
// dropped it.
func (m *model) wantErr(id uuid.UUID) error {
	ls := m.s.lookup(id)
	switch {
	case ls == nil:
		return pharox.ErrLeaseNotFound
	case ls.l.Status != pharox.LeaseActive:
		return pharox.ErrLeaseNotActive
	}
	return nil
}

func (m *model) randomProxy() (uuid.UUID, bool) {
	if len(m.s.proxies) == 0 {
		return uuid.Nil, false
	}
	k := m.r.IntN(len(m.s.proxies))
	for id := range m.s.proxies {
		if k == 0 {
			return id, true
		}
		k--
	}
	return uuid.Nil, false
}

func TestModelRandomOperations(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			clock := newFakeClock()
			s, err := New(WithClock(clock.Now), WithEndedLeaseRetention(50))
			if err != nil {
				t.Fatal(err)
			}
			m := &model{
				t: t, s: s, clock: clock,
				r: rand.New(rand.NewPCG(seed, 99)), ctx: context.Background(), hits: map[string]int{},
			}
			for i := range 2 {
				p, err := m.s.CreatePool(m.ctx, pharox.Pool{Name: fmt.Sprint("pool", i)})
				if err != nil {
					t.Fatal(err)
				}
				m.pools = append(m.pools, p)
				m.addProxies(p, 30)
			}
			if m.consumer, err = m.s.EnsureConsumer(m.ctx, "c"); err != nil {
				t.Fatal(err)
			}
			for range 1000 {
				m.step()
				checkInvariants(t, m.s)
				for _, ps := range m.s.proxies {
					if !ps.indexed && (ps.inFA[0] || ps.inFA[1] || ps.inRR[0] || ps.inRR[1]) {
						t.Fatalf("proxy %s cannot take a lease but is in a first_available or round_robin tree", ps.p.ID)
					}
				}
			}
			for _, path := range []string{"first_available", "least_used", "round_robin", "random", "sticky"} {
				if m.hits[path] == 0 {
					t.Errorf("no successful %s acquisition: the model did not exercise it (%v)", path, m.hits)
				}
			}
			if len(m.s.ended.buf) == 0 {
				t.Fatal("no lease ever ended: the model did not exercise release/expiry")
			}
		})
	}
}

func newTestPool(t *testing.T, s *Store, n int, maxc *int) (*pharox.Pool, *pharox.Consumer, []*pharox.Proxy) {
	t.Helper()
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	var in []pharox.Proxy
	for i := range n {
		in = append(in, pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.0.0.%d", i+1), Port: 8080, Protocol: pharox.ProtocolHTTP, MaxConcurrency: maxc})
	}
	proxies, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	return pool, c, proxies
}

func TestExpiryHeapReclaimsOnNextOperation(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s, err := New(WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	_, c, _ := newTestPool(t, s, 3, intp(1))
	var leases []*pharox.Lease
	for _, d := range []time.Duration{3 * time.Second, time.Second, 2 * time.Second} {
		l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: d, Strategy: pharox.FirstAvailable})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	if _, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Second, Strategy: pharox.FirstAvailable}); !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("full pool: got %v, want ErrNoProxyAvailable", err)
	}
	clock.Advance(1500 * time.Millisecond)
	// Any operation reclaims: GetPoolStats sees exactly the 1s lease gone.
	st, err := s.GetPoolStats(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalLeases != 2 || st.AvailableProxies != 1 || st.LeasedProxies != 2 {
		t.Fatalf("after 1.5s: %+v, want 2 leases and 1 available proxy", st)
	}
	got, err := s.GetLease(ctx, leases[1].ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != pharox.LeaseExpired || got.ReleasedAt == nil || !got.ReleasedAt.Equal(clock.Now()) {
		t.Fatalf("expired lease: %+v", got)
	}
	if _, err := s.ReleaseLease(ctx, leases[1].ID, nil); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Fatalf("release of expired lease: %v, want ErrLeaseNotActive", err)
	}
	// Renew the 2s lease past the 3s one, then let the 3s one expire.
	if _, err := s.RenewLease(ctx, leases[2].ID, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, s)
	clock.Advance(2 * time.Second)
	// Cleanup reclaims by itself, so it counts the 3s lease.
	if n, err := s.CleanupExpiredLeases(ctx); err != nil || n != 1 {
		t.Fatalf("cleanup: n=%d err=%v, want 1", n, err)
	}
	if got, _ := s.GetLease(ctx, leases[0].ID); got.Status != pharox.LeaseExpired {
		t.Fatalf("3s lease after 3.5s: %s", got.Status)
	}
	if got, _ := s.GetLease(ctx, leases[2].ID); got.Status != pharox.LeaseActive {
		t.Fatalf("renewed lease: %s", got.Status)
	}
	if _, err := s.RenewLease(ctx, leases[0].ID, time.Second); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Fatalf("renew expired: %v", err)
	}
	checkInvariants(t, s)
}

func TestEndedLeaseRetention(t *testing.T) {
	ctx := context.Background()
	s, err := New(WithEndedLeaseRetention(3))
	if err != nil {
		t.Fatal(err)
	}
	_, c, _ := newTestPool(t, s, 1, nil)
	var ids []uuid.UUID
	for range 5 {
		l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, l.ID)
	}
	for _, id := range ids[:4] {
		if _, err := s.ReleaseLease(ctx, id, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.GetLease(ctx, ids[0]); !errors.Is(err, pharox.ErrLeaseNotFound) {
		t.Fatalf("oldest ended lease: %v, want ErrLeaseNotFound", err)
	}
	for _, id := range ids[1:] {
		if _, err := s.GetLease(ctx, id); err != nil {
			t.Fatalf("retained lease %s: %v", id, err)
		}
	}
	all, err := s.ListLeases(ctx, pharox.LeaseQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var listed []uuid.UUID
	for _, l := range all {
		listed = append(listed, l.ID)
	}
	if !slices.Equal(listed, ids[1:]) {
		t.Fatalf("ListLeases: %v, want %v (3 retained ended + 1 active, by AcquiredAt)", listed, ids[1:])
	}
	checkInvariants(t, s)

	n, err := s.PurgeEndedLeases(ctx, time.Now().Add(time.Hour))
	if err != nil || n != 3 {
		t.Fatalf("purge: n=%d err=%v, want 3", n, err)
	}
	if _, err := s.GetLease(ctx, ids[4]); err != nil {
		t.Fatalf("active lease after purge: %v", err)
	}
	checkInvariants(t, s)
}

func TestNoRetentionForgetsAtOnce(t *testing.T) {
	ctx := context.Background()
	s, err := New(WithEndedLeaseRetention(0))
	if err != nil {
		t.Fatal(err)
	}
	_, c, _ := newTestPool(t, s, 1, intp(1))
	l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable})
	if err != nil {
		t.Fatal(err)
	}
	ended, err := s.ReleaseLease(ctx, l.ID, nil)
	if err != nil || ended.Status != pharox.LeaseReleased || ended.ReleasedAt == nil {
		t.Fatalf("release: %+v, %v", ended, err)
	}
	if _, err := s.GetLease(ctx, l.ID); !errors.Is(err, pharox.ErrLeaseNotFound) {
		t.Fatalf("get: %v, want ErrLeaseNotFound", err)
	}
	if n := liveRecords(s); n != 0 {
		t.Fatalf("%d lease records kept", n)
	}
}

func TestDeletedProxyLeasesAreForgotten(t *testing.T) {
	ctx := context.Background()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	_, c, proxies := newTestPool(t, s, 2, nil)
	l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteProxy(ctx, l.ProxyID); !errors.Is(err, pharox.ErrInUse) {
		t.Fatalf("delete leased proxy: %v", err)
	}
	if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteProxy(ctx, l.ProxyID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetLease(ctx, l.ID); !errors.Is(err, pharox.ErrLeaseNotFound) {
		t.Fatalf("lease of deleted proxy: %v", err)
	}
	if all, _ := s.ListLeases(ctx, pharox.LeaseQuery{}); len(all) != 0 {
		t.Fatalf("ListLeases after delete: %d leases", len(all))
	}
	if n, err := s.PurgeEndedLeases(ctx, time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("purge counted forgotten leases: %d %v", n, err)
	}
	if n := liveRecords(s); n != 0 {
		t.Fatalf("purge kept %d forgotten leases", n)
	}
	_ = proxies
	checkInvariants(t, s)
}

func TestRandomIsUniformUnderRareFilter(t *testing.T) {
	ctx := context.Background()
	s, err := New(WithEndedLeaseRetention(0))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	var in []pharox.Proxy
	for i := range 400 {
		p := pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.0.%d.%d", i/200, i%200+1), Port: 80, Protocol: pharox.ProtocolHTTP}
		if i%100 == 0 {
			p.ISP = "rare" // 4 of 400: the rejection draws mostly miss
		}
		in = append(in, p)
	}
	if _, err := s.AddProxies(ctx, in); err != nil {
		t.Fatal(err)
	}
	c, _ := s.EnsureConsumer(ctx, "c")
	counts := map[uuid.UUID]int{}
	const draws = 4000
	for range draws {
		l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute,
			Strategy: pharox.Random, Filters: &pharox.Filters{ISP: "rare"}})
		if err != nil {
			t.Fatal(err)
		}
		counts[l.ProxyID]++
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			t.Fatal(err)
		}
	}
	if len(counts) != 4 {
		t.Fatalf("chose %d distinct proxies, want the 4 matching", len(counts))
	}
	for id, n := range counts {
		// Expected 1000 each, standard deviation about 27: 700..1300 is
		// over ten deviations, so a failure means bias, not bad luck.
		if n < 700 || n > 1300 {
			t.Fatalf("proxy %s chosen %d of %d times; distribution %v", id, n, draws, counts)
		}
	}
}

func TestClosedStore(t *testing.T) {
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	ctx := context.Background()
	if err := s.Ping(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("ping: %v", err)
	}
	if _, err := s.CreatePool(ctx, pharox.Pool{Name: "p"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("create pool: %v", err)
	}
	if _, err := s.CleanupExpiredLeases(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("cleanup: %v", err)
	}
}

func liveRecords(s *Store) int {
	n := 0
	for _, ls := range s.slots {
		if ls.live {
			n++
		}
	}
	return n
}

func TestPanickingPredicateLeavesStoreUsable(t *testing.T) {
	ctx := context.Background()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	_, c, _ := newTestPool(t, s, 2, intp(1))
	boom := &pharox.Filters{Predicate: func(*pharox.Proxy) bool { panic("boom") }}
	for _, st := range pharox.AllStrategies {
		_, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute, Strategy: st, Filters: boom})
		if !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Fatalf("%s: err = %v, want ErrInvalidArgument", st, err)
		}
	}
	if _, err := s.FindAvailableProxy(ctx, "p", boom, pharox.FirstAvailable); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("find: err = %v, want ErrInvalidArgument", err)
	}
	// The lock was released and nothing was leased.
	st, err := s.GetPoolStats(ctx, "p")
	if err != nil || st.TotalLeases != 0 || st.AvailableProxies != 2 {
		t.Fatalf("stats after panics: %+v, %v", st, err)
	}
	if _, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable}); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, s)
}

func TestPredicateGetsACopy(t *testing.T) {
	ctx := context.Background()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	_, c, proxies := newTestPool(t, s, 1, nil)
	vandal := &pharox.Filters{Predicate: func(p *pharox.Proxy) bool {
		p.Host, p.CurrentLeases, p.Status = "evil.example", 99, pharox.StatusBanned
		return true
	}}
	if _, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable, Filters: vandal}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetProxy(ctx, proxies[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Host != proxies[0].Host || got.CurrentLeases != 1 || got.Status != pharox.StatusActive {
		t.Fatalf("predicate changed stored state: %+v", got)
	}
	checkInvariants(t, s)
}

// TestConcurrentMixedOperations races acquisitions of every strategy
// against health results, status changes, renewals, cleanups and reads, then
// checks every index and counter. Run with -race it also covers the
// snapshots deep-copied after unlocking.
func TestConcurrentMixedOperations(t *testing.T) {
	ctx := context.Background()
	s, err := New(WithEndedLeaseRetention(500))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	var in []pharox.Proxy
	for i := range 40 {
		p := pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.1.0.%d", i+1), Port: 80, Protocol: pharox.ProtocolHTTP,
			Country: countries[i%3], Tags: []string{"t"}, Credentials: &pharox.Credentials{User: "u", Password: "p"}}
		if i%4 != 3 {
			p.MaxConcurrency = intp(1 + i%2)
		}
		in = append(in, p)
	}
	proxies, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := s.EnsureConsumer(ctx, "c")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				req := pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Duration(1+r.IntN(20)) * time.Millisecond,
					Strategy: pharox.AllStrategies[(g+i)%4]}
				if i%3 == 0 {
					req.Filters = &pharox.Filters{Country: countries[r.IntN(3)]}
				}
				if i%5 == 0 {
					req.SessionKey, req.SessionTTL = fmt.Sprint("k", r.IntN(4)), time.Second
				}
				l, err := s.AcquireLease(ctx, req)
				if errors.Is(err, pharox.ErrNoProxyAvailable) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				_ = l.Proxy.String() // read the deep copy
				if r.IntN(4) == 0 {
					_, _ = s.RenewLease(ctx, l.ID, time.Millisecond)
				}
				if r.IntN(5) > 0 {
					_, _ = s.ReleaseLease(ctx, l.ID, nil) // may have expired meanwhile
				}
			}
		})
	}
	wg.Go(func() {
		r := rand.New(rand.NewPCG(99, 7))
		for {
			select {
			case <-stop:
				return
			default:
			}
			id := proxies[r.IntN(len(proxies))].ID
			if r.IntN(3) == 0 {
				_, _ = s.SetProxyStatus(ctx, id, pharox.AllProxyStatuses[r.IntN(4)])
			} else {
				_, _ = s.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{ProxyID: id, Status: pharox.AllProxyStatuses[r.IntN(2)],
					CheckedAt: time.Now().Add(-time.Duration(r.IntN(1000)) * time.Millisecond)})
			}
			_, _ = s.GetPoolStats(ctx, "p")
			_, _ = s.ListLeases(ctx, pharox.LeaseQuery{Limit: 10})
			_, _ = s.CleanupExpiredLeases(ctx)
		}
	})
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	checkInvariants(t, s)
	if s.seq == 0 {
		t.Fatal("no acquisition succeeded")
	}
}
