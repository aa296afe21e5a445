package memory

import (
	"encoding/binary"

	"github.com/google/btree"
	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// btreeDegree trades node size against depth: with 32, nodes hold 31 to 63
// items and 100k proxies fit in four levels.
const btreeDegree = 32

// proxyState is a stored proxy with the keys its indexes sort by, computed
// once per change so comparisons stay cheap.
type proxyState struct {
	p    pharox.Proxy
	pool *poolState
	// cset is the country's index set in the pool, nil without a country.
	cset *indexSet
	// idx is the proxy's position in Store.table.
	idx uint32

	idHi, idLo  uint64
	rank        uint8
	checked     bool
	checkedSec  int64
	checkedNsec int32

	// indexed is true exactly while the proxy can take a lease (leasable
	// status and a free slot). It is then in every enabled structure, and
	// only then.
	indexed bool
	deleted bool
	// targets holds the proxy's per-target health (see target.go).
	targets map[string]*pharox.TargetState
	// quota is the proxy's quota, if any (see usage.go).
	quota *pharox.Quota
	// inFA and inRR say whether the FirstAvailable and RoundRobin trees of
	// the pool-wide set (0) and of the country set (1) hold the proxy.
	inFA, inRR [2]bool
	// rndPos is the proxy's position in the Random slice of the pool-wide
	// set (0) and of its country set (1).
	rndPos [2]int
}

// refreshKeys recomputes the sort keys from p. Call it while the proxy is
// detached from every set.
func (ps *proxyState) refreshKeys() {
	ps.idHi = binary.BigEndian.Uint64(ps.p.ID[:8])
	ps.idLo = binary.BigEndian.Uint64(ps.p.ID[8:])
	ps.rank = uint8(ps.p.Status.Rank())
	ps.checked = ps.p.CheckedAt != nil
	ps.checkedSec, ps.checkedNsec = 0, 0
	if ps.checked {
		ps.checkedSec = ps.p.CheckedAt.Unix()
		ps.checkedNsec = int32(ps.p.CheckedAt.Nanosecond())
	}
}

func (ps *proxyState) eligible() bool {
	return !ps.deleted && ps.p.Status.Leasable() && ps.p.HasFreeSlot()
}

// Index items carry their sort keys inline, so comparing two items never
// dereferences a proxy, and name their proxy by its index in the store's
// proxy table rather than by pointer: b-tree nodes then hold no pointers, so
// the garbage collector neither scans them nor runs write barriers when a
// node's items shift.
type (
	faItem struct {
		hi, lo uint64
		sec    int64
		nsec   int32
		idx    uint32
		rank   uint8
		// unchecked sorts never-checked proxies last.
		unchecked bool
	}
	luItem struct {
		hi, lo uint64
		leases int
		idx    uint32
		rank   uint8
	}
	idItem struct {
		hi, lo uint64
		idx    uint32
	}
)

func (ps *proxyState) faItem() faItem {
	return faItem{hi: ps.idHi, lo: ps.idLo, sec: ps.checkedSec, nsec: ps.checkedNsec, rank: ps.rank, unchecked: !ps.checked, idx: ps.idx}
}

func (ps *proxyState) luItem() luItem {
	return luItem{hi: ps.idHi, lo: ps.idLo, leases: ps.p.CurrentLeases, rank: ps.rank, idx: ps.idx}
}

func (ps *proxyState) idItem() idItem { return idItem{hi: ps.idHi, lo: ps.idLo, idx: ps.idx} }

// lessID orders by the UUID's bytes, like pharox's reference comparators.
func lessID(a, b idItem) bool {
	return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo
}

// lessFirstAvailable mirrors pharox.CompareFirstAvailable.
func lessFirstAvailable(a, b faItem) bool {
	switch {
	case a.rank != b.rank:
		return a.rank < b.rank
	case a.unchecked != b.unchecked:
		return b.unchecked
	case a.sec != b.sec:
		return a.sec > b.sec
	case a.nsec != b.nsec:
		return a.nsec > b.nsec
	}
	return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo
}

// lessLeastUsed mirrors pharox.CompareLeastUsed.
func lessLeastUsed(a, b luItem) bool {
	switch {
	case a.rank != b.rank:
		return a.rank < b.rank
	case a.leases != b.leases:
		return a.leases < b.leases
	}
	return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo
}

// indexSet holds the leasable proxies of a pool, or of one country in a
// pool, once per strategy. A nil tree (or rndOn false) is a strategy no
// request has used yet; it is built on first use.
type indexSet struct {
	slot    int // index into proxyState.rndPos
	country string
	// members counts the pool's proxies with this country, leasable or not.
	members int
	fa      *btree.BTreeG[faItem]
	lu      *btree.BTreeG[luItem]
	rr      *btree.BTreeG[idItem]
	rnd     []*proxyState
	rndOn   bool
}

// add puts a proxy that became leasable in every enabled structure.
func (x *indexSet) add(ps *proxyState) {
	if x.fa != nil && !ps.inFA[x.slot] {
		x.fa.ReplaceOrInsert(ps.faItem())
		ps.inFA[x.slot] = true
	}
	if x.rr != nil && !ps.inRR[x.slot] {
		x.rr.ReplaceOrInsert(ps.idItem())
		ps.inRR[x.slot] = true
	}
	if x.lu != nil {
		x.lu.ReplaceOrInsert(ps.luItem())
	}
	if x.rndOn {
		ps.rndPos[x.slot] = len(x.rnd)
		x.rnd = append(x.rnd, ps)
	}
}

// remove takes a proxy that stopped being leasable out of every
// structure, so that no search ever walks a busy proxy.
func (x *indexSet) remove(ps *proxyState) {
	x.forget(ps, false)
	if x.lu != nil {
		x.lu.Delete(ps.luItem())
	}
	if x.rndOn {
		i, last := ps.rndPos[x.slot], len(x.rnd)-1
		moved := x.rnd[last]
		x.rnd[i] = moved
		moved.rndPos[x.slot] = i
		x.rnd[last] = nil
		x.rnd = x.rnd[:last]
	}
}

// forget deletes ps's FirstAvailable and (unless keysOnly) RoundRobin
// items, before its keys change or it leaves the store (its table index
// may then be reused).
func (x *indexSet) forget(ps *proxyState, keysOnly bool) {
	if ps.inFA[x.slot] {
		x.fa.Delete(ps.faItem())
		ps.inFA[x.slot] = false
	}
	if !keysOnly && ps.inRR[x.slot] {
		x.rr.Delete(ps.idItem())
		ps.inRR[x.slot] = false
	}
}

// poolState is one pool with its proxies, indexes, sessions and counters.
type poolState struct {
	pool      pharox.Pool
	proxies   map[uuid.UUID]*proxyState
	all       indexSet
	byCountry map[string]*indexSet

	// rrCursor is the id of the proxy last handed out under RoundRobin.
	rrCursor idItem
	rrSet    bool

	sessions       map[string]session
	sessionSweepAt int

	// Counters behind GetPoolStats.
	byStatus  [4]int // by ProxyStatus.Rank
	available int    // proxies with indexed == true
	leased    int    // proxies with CurrentLeases > 0
	leases    int    // active leases
	deleted   bool
	// quota is the pool's quota, if any (see usage.go).
	quota *pharox.Quota
}

// session binds a sticky-session key to a proxy until expires (Unix µs).
type session struct {
	proxy   *proxyState
	expires int64
}

func newPoolState(p pharox.Pool) *poolState {
	pl := &poolState{
		pool:      p,
		proxies:   make(map[uuid.UUID]*proxyState),
		byCountry: make(map[string]*indexSet),
		sessions:  make(map[string]session),
	}
	// The default strategy's pool-wide tree exists from the start, so
	// adding proxies pays for it rather than the first acquisition (which
	// would hold the lock while building it: ~0.1 s for 100k proxies).
	pl.ensure(&pl.all, pharox.FirstAvailable)
	return pl
}

// ensure builds x's structure for st if no request used it before.
func (pl *poolState) ensure(x *indexSet, st pharox.Strategy) {
	switch st {
	case pharox.LeastUsed:
		if x.lu == nil {
			x.lu = btree.NewG(btreeDegree, lessLeastUsed)
			pl.eachIndexed(x, func(ps *proxyState) { x.lu.ReplaceOrInsert(ps.luItem()) })
		}
	case pharox.RoundRobin:
		if x.rr == nil {
			x.rr = btree.NewG(btreeDegree, lessID)
			pl.eachIndexed(x, func(ps *proxyState) {
				x.rr.ReplaceOrInsert(ps.idItem())
				ps.inRR[x.slot] = true
			})
		}
	case pharox.Random:
		if !x.rndOn {
			x.rndOn = true
			pl.eachIndexed(x, func(ps *proxyState) {
				ps.rndPos[x.slot] = len(x.rnd)
				x.rnd = append(x.rnd, ps)
			})
		}
	default:
		if x.fa == nil {
			x.fa = btree.NewG(btreeDegree, lessFirstAvailable)
			pl.eachIndexed(x, func(ps *proxyState) {
				x.fa.ReplaceOrInsert(ps.faItem())
				ps.inFA[x.slot] = true
			})
		}
	}
}

// eachIndexed calls fn for every leasable proxy in x's scope.
func (pl *poolState) eachIndexed(x *indexSet, fn func(*proxyState)) {
	for _, ps := range pl.proxies {
		if ps.indexed && (x.country == "" || ps.p.Country == x.country) {
			fn(ps)
		}
	}
}

// addProxy stores a new proxy in the pool and its indexes.
func (pl *poolState) addProxy(ps *proxyState) {
	ps.pool = pl
	ps.refreshKeys()
	if c := ps.p.Country; c != "" {
		cs := pl.byCountry[c]
		if cs == nil {
			cs = &indexSet{slot: 1, country: c}
			pl.byCountry[c] = cs
		}
		cs.members++
		ps.cset = cs
	}
	pl.proxies[ps.p.ID] = ps
	pl.byStatus[ps.rank]++
	if ps.p.CurrentLeases > 0 {
		pl.leased++
		pl.leases += ps.p.CurrentLeases
	}
	pl.attach(ps)
}

// removeProxy takes a proxy without active leases out of the pool.
func (pl *poolState) removeProxy(ps *proxyState) {
	pl.detach(ps)
	pl.all.forget(ps, false)
	if ps.cset != nil {
		ps.cset.forget(ps, false)
	}
	pl.byStatus[ps.rank]--
	delete(pl.proxies, ps.p.ID)
	ps.deleted = true
	if x := ps.cset; x != nil {
		// Drop an empty country set so churn through many countries does
		// not grow the map; it is rebuilt if the country comes back.
		if x.members--; x.members == 0 {
			delete(pl.byCountry, x.country)
		}
	}
}

// attach puts ps in every enabled set if it can take a lease.
func (pl *poolState) attach(ps *proxyState) {
	if ps.indexed || !ps.eligible() {
		return
	}
	pl.all.add(ps)
	if ps.cset != nil {
		ps.cset.add(ps)
	}
	ps.indexed = true
	pl.available++
}

// detach takes ps out of every set.
func (pl *poolState) detach(ps *proxyState) {
	if !ps.indexed {
		return
	}
	pl.all.remove(ps)
	if ps.cset != nil {
		ps.cset.remove(ps)
	}
	ps.indexed = false
	pl.available--
}

// setLeases changes ps's active lease count and keeps indexes and counters
// in step. It is the hot path of acquire and release, so while the proxy
// stays leasable only the LeastUsed sets, whose key includes the count, are
// touched.
func (pl *poolState) setLeases(ps *proxyState, n int) {
	old := ps.p.CurrentLeases
	if ps.indexed && (ps.p.MaxConcurrency == nil || n < *ps.p.MaxConcurrency) {
		cs := ps.cset
		if pl.all.lu != nil {
			pl.all.lu.Delete(ps.luItem())
		}
		if cs != nil && cs.lu != nil {
			cs.lu.Delete(ps.luItem())
		}
		ps.p.CurrentLeases = n
		if pl.all.lu != nil {
			pl.all.lu.ReplaceOrInsert(ps.luItem())
		}
		if cs != nil && cs.lu != nil {
			cs.lu.ReplaceOrInsert(ps.luItem())
		}
	} else {
		pl.detach(ps)
		ps.p.CurrentLeases = n
		pl.attach(ps)
	}
	switch {
	case old == 0 && n > 0:
		pl.leased++
	case old > 0 && n == 0:
		pl.leased--
	}
	pl.leases += n - old
}

// update applies a change that may move ps's status or health keys.
func (pl *poolState) update(ps *proxyState, change func(p *pharox.Proxy)) {
	pl.detach(ps)
	// The FirstAvailable key (status, checked_at) may change; the id, the
	// RoundRobin key, cannot.
	pl.all.forget(ps, true)
	if ps.cset != nil {
		ps.cset.forget(ps, true)
	}
	pl.byStatus[ps.rank]--
	change(&ps.p)
	ps.refreshKeys()
	pl.byStatus[ps.rank]++
	pl.attach(ps)
}

// sweepSessions drops bindings that expired or lost their proxy.
func (pl *poolState) sweepSessions(now int64) {
	for k, s := range pl.sessions {
		if s.expires <= now || s.proxy.deleted {
			delete(pl.sessions, k)
		}
	}
	pl.sessionSweepAt = max(1024, 2*len(pl.sessions))
}
