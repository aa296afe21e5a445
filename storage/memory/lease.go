package memory

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// leaseState is a lease record. Records are recycled: once an ended lease
// leaves retention its record serves the next acquisition, so no pointer to
// a record (or into it) may leave the lock.
type leaseState struct {
	l          pharox.Lease // never carries a Proxy snapshot
	releasedAt time.Time    // l.ReleasedAt points here once ended
	heapIdx    int          // position in the expiry heap, -1 unless active
	seq        uint64       // acquisition order, breaks AcquiredAt ties
	slot       uint32
	live       bool // holds a lease (active or retained), not free
	// chosen: the caller chose the id, which is then in Store.chosen.
	chosen bool
	// verdict: a ban or failure verdict was claimed on the lease
	// (ClaimLeaseVerdict).
	verdict bool
	proxy   *proxyState
	// consumer is the lease's consumer while the lease is active (its
	// count of active leases includes it).
	consumer *consumerState
	// usage is what the release reported; l.Usage points here then.
	usage pharox.Usage
}

// newLease takes a free record (or makes one) for a lease whose id is
// random except for its last four bytes, which name the record's slot, or
// is the id the caller chose (not nil). Call with mu held.
func (s *Store) newLease(random, chosen uuid.UUID) *leaseState {
	var ls *leaseState
	if n := len(s.freeSlots); n > 0 {
		ls = s.slots[s.freeSlots[n-1]]
		s.freeSlots = s.freeSlots[:n-1]
	} else {
		ls = &leaseState{slot: uint32(len(s.slots)), heapIdx: -1}
		s.slots = append(s.slots, ls)
	}
	ls.live = true
	ls.l.ID = random
	// XOR with a per-store mask so ids do not count up visibly; the other
	// 90 random bits keep them unguessable.
	binary.BigEndian.PutUint32(ls.l.ID[12:], ls.slot^s.slotMask)
	if chosen != uuid.Nil {
		ls.l.ID, ls.chosen = chosen, true
		if s.chosen == nil {
			s.chosen = make(map[uuid.UUID]*leaseState)
		}
		s.chosen[chosen] = ls
	}
	return ls
}

// freeLease forgets a lease and returns its record for reuse.
func (s *Store) freeLease(ls *leaseState) {
	// An invisible lease (of a deleted proxy) may have left its id to a
	// newer lease: only drop the entry that is this record's.
	if ls.chosen && s.chosen[ls.l.ID] == ls {
		delete(s.chosen, ls.l.ID)
	}
	ls.chosen = false
	ls.verdict = false
	ls.live = false
	ls.l = pharox.Lease{}
	ls.proxy = nil
	ls.consumer = nil
	s.freeSlots = append(s.freeSlots, ls.slot)
}

// lookup finds a visible lease by id. Call with mu held.
func (s *Store) lookup(id uuid.UUID) *leaseState {
	slot := binary.BigEndian.Uint32(id[12:]) ^ s.slotMask
	if int64(slot) < int64(len(s.slots)) {
		if ls := s.slots[slot]; ls.live && ls.l.ID == id && ls.visible() {
			return ls
		}
	}
	if ls := s.chosen[id]; ls != nil && ls.visible() {
		return ls
	}
	return nil
}

// visible is false for leases of a deleted proxy or pool, which are
// forgotten at once and freed as retention moves on.
func (ls *leaseState) visible() bool { return !ls.proxy.deleted }

// heapEntry keeps the expiry inline so sifting compares without touching
// lease records.
type heapEntry struct {
	expires int64 // Unix µs
	ls      *leaseState
}

// expiryHeap is a min-heap of active leases by expiry.
type expiryHeap []heapEntry

func (h expiryHeap) less(i, j int) bool { return h[i].expires < h[j].expires }

func (h expiryHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].ls.heapIdx = i
	h[j].ls.heapIdx = j
}

func (h *expiryHeap) push(ls *leaseState, expires int64) {
	ls.heapIdx = len(*h)
	*h = append(*h, heapEntry{expires: expires, ls: ls})
	h.up(ls.heapIdx)
}

// remove takes the lease at i out of the heap.
func (h *expiryHeap) remove(i int) {
	old := *h
	last := len(old) - 1
	ls := old[i].ls
	if i != last {
		old.swap(i, last)
	}
	old[last] = heapEntry{}
	*h = old[:last]
	if i != last {
		h.fix(i)
	}
	ls.heapIdx = -1
}

// fix restores order after the entry at i changed its expiry.
func (h expiryHeap) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h expiryHeap) up(j int) {
	for j > 0 {
		i := (j - 1) / 2
		if !h.less(j, i) {
			break
		}
		h.swap(i, j)
		j = i
	}
}

func (h expiryHeap) down(i0 int) bool {
	i, n := i0, len(h)
	for {
		j := 2*i + 1
		if j >= n || j < 0 {
			break
		}
		if r := j + 1; r < n && h.less(r, j) {
			j = r
		}
		if !h.less(j, i) {
			break
		}
		h.swap(i, j)
		i = j
	}
	return i > i0
}

// leaseRing is a FIFO of ended leases in the order they ended.
type leaseRing struct {
	buf  []*leaseState
	head int
	n    int
}

func (r *leaseRing) push(ls *leaseState) {
	if r.n == len(r.buf) {
		grown := make([]*leaseState, max(64, 2*len(r.buf)))
		for i := range r.n {
			grown[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = grown, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = ls
	r.n++
}

func (r *leaseRing) pop() *leaseState {
	ls := r.buf[r.head]
	r.buf[r.head] = nil
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return ls
}

// scanner tests candidates against a request's filters. The Store keeps one
// and hands its method values to the b-tree iterators.
type scanner struct {
	f *pharox.Filters
	// clone passes a copy to Match when the filters carry a Predicate, so
	// user code never sees (or keeps) stored state.
	clone bool
	found *proxyState
	// pivot bounds visitUpTo and visitPast: the round-robin cursor.
	pivot idItem
	// panicked holds what a Predicate panicked with; the search then
	// fails with an error instead of leaving the store locked.
	panicked any
	// table resolves index items to proxies: the store's table as of reset.
	table []*proxyState
	// budget bounds the candidates one search tests against filters;
	// tested counts them and exhausted says the search stopped there.
	budget    int
	tested    int
	exhausted bool
	// cool holds, for a request with a target, when each proxy (by table
	// index) cools down for that target until (Unix µs); now is the
	// request's time. Nil when no proxy has a cool-down for it.
	cool   map[uint32]int64
	now    int64
	target string
	// spent holds, when any proxy is over its traffic allowance, until
	// when each such proxy (by table index) is (Unix µs); see usage.go.
	spent map[uint32]int64
}

func (sc *scanner) reset(f *pharox.Filters, table []*proxyState) {
	if f.IsZero() {
		f = nil
	}
	sc.f, sc.clone, sc.found, sc.panicked, sc.table = f, f.HasPredicate(), nil, nil, table
	sc.tested, sc.exhausted = 0, false
	sc.cool, sc.target, sc.spent = nil, "", nil
}

// plain reports whether the search takes any candidate: no filter, no
// cool-down and no used-up allowance to skip.
func (sc *scanner) plain() bool { return sc.f == nil && sc.cool == nil && sc.spent == nil }

// setTarget makes the search skip proxies cooling down for target at now.
func (s *Store) setTarget(target string, now int64) {
	if target == "" {
		return
	}
	s.scan.target = target
	if c := s.cooling[target]; len(c) > 0 {
		s.scan.cool, s.scan.now = c, now
	}
}

// cooling reports whether ps cools down for the search's target.
func (sc *scanner) cooling(ps *proxyState) bool {
	if sc.cool == nil {
		return false
	}
	until, ok := sc.cool[ps.idx]
	return ok && until > sc.now
}

// tooSelective reports a search that used its whole budget without a
// match.
func (sc *scanner) tooSelective() error {
	if !sc.exhausted {
		return nil
	}
	if sc.f == nil && sc.spent == nil {
		return fmt.Errorf("%w: all of the %d candidates examined are cooling down for target %q",
			pharox.ErrNoProxyAvailable, sc.budget, sc.target)
	}
	if sc.f == nil {
		return fmt.Errorf("%w: all of the %d candidates examined are over their traffic allowance or cooling down for the target",
			pharox.ErrNoProxyAvailable, sc.budget)
	}
	return fmt.Errorf("%w: the filter matched none of the %d candidates examined; it is too selective to serve from a pool this large (narrow the pool or loosen the filter)",
		pharox.ErrNoProxyAvailable, sc.budget)
}

func (sc *scanner) match(ps *proxyState) bool {
	switch {
	case sc.cooling(ps), sc.overAllowance(ps):
		return false
	case sc.f == nil:
		return true
	case sc.clone:
		return sc.matchPredicate(ps)
	default:
		return sc.f.Match(&ps.p)
	}
}

// matchPredicate runs user code: it gets a copy, and a panic is caught and
// remembered (the proxy then does not match).
func (sc *scanner) matchPredicate(ps *proxyState) (ok bool) {
	if sc.panicked != nil {
		return false
	}
	defer func() {
		if r := recover(); r != nil {
			sc.panicked, ok = r, false
		}
	}()
	return sc.f.Match(ps.p.Clone())
}

// predicateErr reports a Predicate that panicked during the last search.
func (sc *scanner) predicateErr() error {
	if sc.panicked == nil {
		return nil
	}
	return fmt.Errorf("%w: filter predicate panicked: %v", pharox.ErrInvalidArgument, sc.panicked)
}

func (sc *scanner) visit(ps *proxyState) bool {
	if !sc.plain() {
		if sc.tested == sc.budget {
			sc.exhausted = true
			return false
		}
		sc.tested++
	}
	if sc.match(ps) {
		sc.found = ps
		return false
	}
	return true
}

func (sc *scanner) visitFA(it faItem) bool { return sc.visit(sc.table[it.idx]) }

func (sc *scanner) visitLU(it luItem) bool { return sc.visit(sc.table[it.idx]) }

func (sc *scanner) visitRR(it idItem) bool { return sc.visit(sc.table[it.idx]) }

// visitPast skips the cursor itself, which AscendGreaterOrEqual includes.
func (sc *scanner) visitPast(it idItem) bool {
	if !lessID(sc.pivot, it) {
		return true
	}
	return sc.visitRR(it)
}

// visitUpTo stops after the cursor: the wrapped-around half of a
// round-robin walk.
func (sc *scanner) visitUpTo(it idItem) bool {
	if lessID(sc.pivot, it) {
		return false
	}
	return sc.visitRR(it)
}

// pick returns the candidate st chooses among pl's leasable proxies that
// match the scanner's filters, or nil. Call with mu held and sc reset.
func (s *Store) pick(pl *poolState, st pharox.Strategy) *proxyState {
	sc := &s.scan
	x := &pl.all
	if sc.f != nil && sc.f.Country != "" {
		if x = pl.byCountry[sc.f.Country]; x == nil {
			return nil
		}
	}
	pl.ensure(x, st)
	switch st {
	case pharox.LeastUsed:
		x.lu.Ascend(s.visitLU)
	case pharox.RoundRobin:
		if pl.rrSet {
			sc.pivot = pl.rrCursor
			x.rr.AscendGreaterOrEqual(sc.pivot, s.visitPast)
			if sc.found == nil {
				x.rr.Ascend(s.visitUpTo)
			}
		} else {
			x.rr.Ascend(s.visitRR)
		}
	case pharox.Random:
		return pickRandom(sc, x.rnd)
	default:
		if sc.plain() {
			if it, ok := x.fa.Min(); ok {
				sc.found = s.table[it.idx]
			}
		} else {
			x.fa.Ascend(s.visitFA)
		}
	}
	return sc.found
}

// pickRandom chooses uniformly among the matching members of set. Random
// draws are uniform over set, so the first draw that matches is uniform over
// the matching ones; when matches are too rare for that to be quick, a
// reservoir-sampling pass over the set decides instead, if the set is
// within the scan budget, and more draws up to the budget otherwise.
func pickRandom(sc *scanner, set []*proxyState) *proxyState {
	n := len(set)
	if n == 0 {
		return nil
	}
	if sc.plain() {
		return set[rand.IntN(n)]
	}
	draws := min(32, sc.budget)
	if n > sc.budget {
		draws = sc.budget
	}
	for range draws {
		sc.tested++
		if ps := set[rand.IntN(n)]; sc.match(ps) {
			return ps
		}
	}
	if n > sc.budget {
		sc.exhausted = true
		return nil
	}
	var chosen *proxyState
	seen := 0
	for _, ps := range set {
		if sc.match(ps) {
			seen++
			if rand.IntN(seen) == 0 {
				chosen = ps
			}
		}
	}
	return chosen
}

// AcquireLease atomically chooses a proxy and leases one of its slots.
func (s *Store) AcquireLease(ctx context.Context, req pharox.AcquireRequest) (*pharox.Lease, error) {
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("memory: acquire lease: %w", err)
	}
	random := newID() // crypto/rand needs no lock

	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: acquire lease: %w", err)
	}
	pl := s.poolNames[req.PoolName]
	if pl == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: acquire lease from pool %q: %w", req.PoolName, pharox.ErrPoolNotFound)
	}
	cs := s.consumers[req.ConsumerID]
	if cs == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: acquire lease: consumer %s: %w", req.ConsumerID, pharox.ErrConsumerNotFound)
	}
	if req.LeaseID != uuid.Nil {
		if ls := s.lookup(req.LeaseID); ls != nil {
			return s.repeatedLease(ls, pl, &cs.c)
		}
	}
	if cs.quota != nil || pl.quota != nil {
		if err := admit(cs, pl, now); err != nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("memory: acquire lease from pool %q: %w", req.PoolName, err)
		}
	}
	nowMicro := now.UnixMicro()
	s.scan.reset(req.Filters, s.table)
	s.setTarget(req.Target, nowMicro)
	s.setSpent(nowMicro)

	var ps *proxyState
	if req.SessionKey != "" {
		if b, ok := pl.sessions[req.SessionKey]; ok && b.expires > nowMicro && b.proxy.indexed && s.scan.match(b.proxy) {
			ps = b.proxy
		}
	}
	if ps == nil {
		ps = s.pick(pl, req.Strategy)
		if err := s.scan.predicateErr(); err != nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("memory: acquire lease from pool %q: %w", req.PoolName, err)
		}
		if ps == nil {
			err := s.scan.tooSelective()
			s.mu.Unlock()
			if err == nil {
				err = pharox.ErrNoProxyAvailable
			}
			return nil, fmt.Errorf("memory: acquire lease from pool %q: %w", req.PoolName, err)
		}
		if req.Strategy == pharox.RoundRobin {
			pl.rrCursor = ps.idItem()
			pl.rrSet = true
		}
	}
	if req.SessionKey != "" {
		if _, ok := pl.sessions[req.SessionKey]; !ok && len(pl.sessions) >= pl.sessionSweepAt {
			pl.sweepSessions(nowMicro)
		}
		pl.sessions[req.SessionKey] = session{proxy: ps, expires: now.Add(req.SessionTTL).UnixMicro()}
	}

	pl.setLeases(ps, ps.p.CurrentLeases+1)
	cs.leases++
	takeTokens(cs, pl, now)
	name := req.ConsumerName
	if name == "" {
		name = cs.c.Name
	}
	expiresAt := now.Add(req.Duration).Truncate(time.Microsecond)
	ls := s.newLease(random, req.LeaseID)
	ls.l = pharox.Lease{
		ID:           ls.l.ID,
		ProxyID:      ps.p.ID,
		ConsumerID:   cs.c.ID,
		ConsumerName: name,
		PoolID:       pl.pool.ID,
		PoolName:     pl.pool.Name,
		Status:       pharox.LeaseActive,
		AcquiredAt:   now,
		ExpiresAt:    expiresAt,
		SessionKey:   req.SessionKey,
		Target:       req.Target,
	}
	ls.proxy = ps
	ls.consumer = cs
	s.seq++
	ls.seq = s.seq
	s.expiry.push(ls, expiresAt.UnixMicro())

	out := ls.l
	// A shallow copy is enough under the lock: stored proxies' pointer
	// fields are replaced, never written through, so the deep copy can
	// happen after unlocking.
	snap := ps.p
	s.mu.Unlock()

	res := &out
	res.Proxy = snap.Clone()
	return res, nil
}

// repeatedLease answers an acquisition whose LeaseID the store already
// holds: the lease as it is now when the pool and consumer are the
// request's (a retry), ErrAlreadyExists otherwise. It takes no slot. Call
// with mu held; it unlocks.
func (s *Store) repeatedLease(ls *leaseState, pl *poolState, consumer *pharox.Consumer) (*pharox.Lease, error) {
	if ls.l.PoolID != pl.pool.ID || ls.l.ConsumerID != consumer.ID {
		id := ls.l.ID
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: acquire lease from pool %q: lease id %s is taken by another consumer or pool: %w",
			pl.pool.Name, id, pharox.ErrAlreadyExists)
	}
	sn := ls.snapshot()
	snap := ls.proxy.p
	s.mu.Unlock()
	out := sn.lease()
	out.Proxy = snap.Clone()
	return out, nil
}

// FindAvailableProxy returns the proxy AcquireLease would choose now without
// leasing it; it moves neither the round-robin cursor nor session bindings.
func (s *Store) FindAvailableProxy(ctx context.Context, pool string, filters *pharox.Filters, strategy pharox.Strategy) (*pharox.Proxy, error) {
	if !strategy.Valid() {
		return nil, fmt.Errorf("memory: find available proxy: %w: unknown strategy %q", pharox.ErrInvalidArgument, strategy)
	}
	strategy = strategy.OrDefault()
	f := filters.NormalizedClone()
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("memory: find available proxy: %w", err)
	}
	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: find available proxy: %w", err)
	}
	pl := s.poolNames[pool]
	if pl == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: find available proxy in pool %q: %w", pool, pharox.ErrPoolNotFound)
	}
	s.scan.reset(f, s.table)
	s.setSpent(now.UnixMicro())
	ps := s.pick(pl, strategy)
	if err := s.scan.predicateErr(); err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: find available proxy in pool %q: %w", pool, err)
	}
	if ps == nil {
		err := s.scan.tooSelective()
		s.mu.Unlock()
		if err == nil {
			err = pharox.ErrNoProxyAvailable
		}
		return nil, fmt.Errorf("memory: find available proxy in pool %q: %w", pool, err)
	}
	snap := ps.p
	s.mu.Unlock()
	return snap.Clone(), nil
}

// endLease ends an active lease, frees its slot and returns the ended
// lease, copied before retention may recycle its record. Call with mu held.
func (s *Store) endLease(ls *leaseState, status pharox.LeaseStatus, now time.Time) snapshot {
	ls.l.Status = status
	ls.releasedAt = now
	ls.l.ReleasedAt = &ls.releasedAt
	s.expiry.remove(ls.heapIdx)
	ps := ls.proxy
	ps.pool.setLeases(ps, ps.p.CurrentLeases-1)
	ls.consumer.leases--
	ls.consumer = nil
	sn := ls.snapshot()
	s.ended.push(ls)
	for s.ended.n > s.retention {
		s.freeLease(s.ended.pop())
	}
	return sn
}

// reap ends every active lease past its expiry. Call with mu held.
func (s *Store) reap(now time.Time) int {
	n := 0
	micro := now.UnixMicro()
	for len(s.expiry) > 0 && s.expiry[0].expires <= micro {
		s.endLease(s.expiry[0].ls, pharox.LeaseExpired, now)
		n++
	}
	return n
}

// snapshot copies a lease record's Lease under the lock, ReleasedAt
// included: records are recycled, so nothing may point into one.
type snapshot struct {
	l   pharox.Lease
	rel time.Time
	use pharox.Usage
	seq uint64
}

func (ls *leaseState) snapshot() snapshot {
	return snapshot{l: ls.l, rel: ls.releasedAt, use: ls.usage, seq: ls.seq}
}

// lease returns the caller's copy, in one allocation.
func (sn snapshot) lease() *pharox.Lease {
	b := &sn
	if b.l.ReleasedAt != nil {
		b.l.ReleasedAt = &b.rel
	}
	if b.l.Usage != nil {
		b.l.Usage = &b.use
	}
	return &b.l
}

// lockActive locks the store and returns the active lease leaseID, the
// store still locked; on error it has unlocked it. lock has already ended
// the lease as expired if its time had passed. op names the caller's
// operation in errors.
func (s *Store) lockActive(ctx context.Context, op string, leaseID uuid.UUID) (*leaseState, time.Time, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return nil, now, fmt.Errorf("memory: %s lease %s: %w", op, leaseID, err)
	}
	ls := s.lookup(leaseID)
	if ls == nil {
		s.mu.Unlock()
		return nil, now, fmt.Errorf("memory: %s lease %s: %w", op, leaseID, pharox.ErrLeaseNotFound)
	}
	if ls.l.Status != pharox.LeaseActive {
		status := ls.l.Status
		s.mu.Unlock()
		return nil, now, fmt.Errorf("memory: %s lease %s: lease is %s: %w", op, leaseID, status, pharox.ErrLeaseNotActive)
	}
	return ls, now, nil
}

// ReleaseLease ends an active lease as released and frees its slot. A
// usage report is stored on the lease and counted (see usage.go).
func (s *Store) ReleaseLease(ctx context.Context, leaseID uuid.UUID, usage *pharox.Usage) (*pharox.Lease, error) {
	ls, now, err := s.lockActive(ctx, "release", leaseID)
	if err != nil {
		return nil, err
	}
	if usage != nil {
		s.meter(ls, *usage, now)
	}
	sn := s.endLease(ls, pharox.LeaseReleased, now)
	s.mu.Unlock()
	return sn.lease(), nil
}

// RenewLease moves an active, unexpired lease's ExpiresAt to now + d.
func (s *Store) RenewLease(ctx context.Context, leaseID uuid.UUID, d time.Duration) (*pharox.Lease, error) {
	if d <= 0 {
		return nil, fmt.Errorf("memory: renew lease %s: %w: duration must be positive, got %v", leaseID, pharox.ErrInvalidArgument, d)
	}
	ls, now, err := s.lockActive(ctx, "renew", leaseID)
	if err != nil {
		return nil, err
	}
	ls.l.ExpiresAt = now.Add(d).Truncate(time.Microsecond)
	s.expiry[ls.heapIdx].expires = ls.l.ExpiresAt.UnixMicro()
	s.expiry.fix(ls.heapIdx)
	out := ls.l
	s.mu.Unlock()
	return &out, nil
}

// CleanupExpiredLeases ends every active lease past its expiry, drops dead
// session bindings and returns how many leases it ended. Leases that an
// earlier operation already reclaimed are not counted again.
func (s *Store) CleanupExpiredLeases(ctx context.Context) (int, error) {
	now, err := s.lockNoReap(ctx)
	if err != nil {
		return 0, fmt.Errorf("memory: cleanup expired leases: %w", err)
	}
	defer s.mu.Unlock()
	n := s.reap(now)
	for _, pl := range s.pools {
		pl.sweepSessions(now.UnixMicro())
	}
	s.sweepSpent(now.UnixMicro())
	return n, nil
}

// GetPoolStats returns the pool's occupancy from counters kept with every
// change. ByStatus holds only statuses with at least one proxy.
func (s *Store) GetPoolStats(ctx context.Context, pool string) (*pharox.PoolStats, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: pool stats: %w", err)
	}
	pl := s.poolNames[pool]
	if pl == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: pool stats %q: %w", pool, pharox.ErrPoolNotFound)
	}
	st := pharox.PoolStats{
		PoolName:         pl.pool.Name,
		TotalProxies:     len(pl.proxies),
		ActiveProxies:    pl.byStatus[0] + pl.byStatus[1],
		AvailableProxies: pl.available,
		LeasedProxies:    pl.leased,
		TotalLeases:      pl.leases,
		CollectedAt:      now,
	}
	byStatus := pl.byStatus
	s.mu.Unlock()
	st.ByStatus = make(map[pharox.ProxyStatus]int, 4)
	for _, status := range pharox.AllProxyStatuses {
		if n := byStatus[status.Rank()]; n > 0 {
			st.ByStatus[status] = n
		}
	}
	return &st, nil
}

// GetLease returns a lease by id, without a Proxy snapshot. Ended leases
// are found while retained (see WithEndedLeaseRetention).
func (s *Store) GetLease(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, fmt.Errorf("memory: get lease %s: %w", id, err)
	}
	ls := s.lookup(id)
	if ls == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: get lease %s: %w", id, pharox.ErrLeaseNotFound)
	}
	sn := ls.snapshot()
	s.mu.Unlock()
	return sn.lease(), nil
}

// ListLeases returns the active and retained ended leases matching q,
// oldest AcquiredAt first (ties in acquisition order).
func (s *Store) ListLeases(ctx context.Context, q pharox.LeaseQuery) ([]*pharox.Lease, error) {
	if q.Limit < 0 {
		return nil, fmt.Errorf("memory: list leases: %w: negative limit %d", pharox.ErrInvalidArgument, q.Limit)
	}
	if q.Status != "" && !q.Status.Valid() {
		return nil, fmt.Errorf("memory: list leases: %w: unknown lease status %q", pharox.ErrInvalidArgument, q.Status)
	}
	if _, err := s.lock(ctx); err != nil {
		return nil, fmt.Errorf("memory: list leases: %w", err)
	}
	var found []snapshot
	for _, ls := range s.slots {
		l := &ls.l
		if !ls.live || !ls.visible() ||
			q.PoolID != uuid.Nil && l.PoolID != q.PoolID ||
			q.ProxyID != uuid.Nil && l.ProxyID != q.ProxyID ||
			q.ConsumerID != uuid.Nil && l.ConsumerID != q.ConsumerID ||
			q.Status != "" && l.Status != q.Status {
			continue
		}
		found = append(found, ls.snapshot())
	}
	s.mu.Unlock()
	slices.SortFunc(found, func(a, b snapshot) int {
		if c := a.l.AcquiredAt.Compare(b.l.AcquiredAt); c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
	if q.Limit > 0 && len(found) > q.Limit {
		found = found[:q.Limit]
	}
	out := make([]*pharox.Lease, len(found))
	for i := range found {
		out[i] = found[i].lease()
	}
	return out, nil
}

// PurgeEndedLeases forgets ended leases that ended before endedBefore and
// returns how many it forgot.
func (s *Store) PurgeEndedLeases(ctx context.Context, endedBefore time.Time) (int, error) {
	if _, err := s.lock(ctx); err != nil {
		return 0, fmt.Errorf("memory: purge ended leases: %w", err)
	}
	defer s.mu.Unlock()
	kept := leaseRing{buf: make([]*leaseState, max(64, s.ended.n))}
	n := 0
	for s.ended.n > 0 {
		ls := s.ended.pop()
		switch {
		case !ls.visible():
			s.freeLease(ls)
		case ls.releasedAt.Before(endedBefore):
			s.freeLease(ls)
			n++
		default:
			kept.push(ls)
		}
	}
	s.ended = kept
	return n, nil
}
