package memory

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

// DefaultEndedLeaseRetention is how many ended (released or expired) leases
// a Store keeps for GetLease and ListLeases unless told otherwise.
const DefaultEndedLeaseRetention = 100_000

// ErrClosed is returned by every operation on a closed Store.
var ErrClosed = errors.New("memory: store is closed")

// Option configures a Store. An option whose argument is out of range
// makes New fail with an error wrapping [pharox.ErrInvalidArgument].
type Option func(*config) error

// config is what the options set; New builds the Store from it.
type config struct {
	now       func() time.Time
	retention int
	budget    int
}

// WithEndedLeaseRetention keeps the last n ended leases (default
// DefaultEndedLeaseRetention; 0 keeps none: a released lease is forgotten
// at once). Older ones are forgotten first. A negative n is refused.
func WithEndedLeaseRetention(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("%w: memory: WithEndedLeaseRetention: count must be at least 0, got %d", pharox.ErrInvalidArgument, n)
		}
		c.retention = n
		return nil
	}
}

// DefaultFilterScanBudget is how many candidates one acquisition tests
// against its filters, at most; see WithFilterScanBudget.
const DefaultFilterScanBudget = 20000

// WithFilterScanBudget sets how many candidates (proxies that can take a
// lease) one acquisition or FindAvailableProxy tests against its filters
// before giving up with pharox.ErrNoProxyAvailable, saying the filter is
// too selective (default DefaultFilterScanBudget). The search runs under
// the store's lock, so the budget bounds how long one call can stall every
// other. n must be at least 1.
func WithFilterScanBudget(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("%w: memory: WithFilterScanBudget: budget must be at least 1, got %d", pharox.ErrInvalidArgument, n)
		}
		c.budget = n
		return nil
	}
}

// WithClock replaces time.Now as the store's clock, for tests that need to
// move time without sleeping. now must not be nil and must be safe for
// concurrent use. The store never lets its time go backwards: a clock that
// steps back reads as the latest time already used.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return fmt.Errorf("%w: memory: WithClock: clock is nil", pharox.ErrInvalidArgument)
		}
		c.now = now
		return nil
	}
}

// Store is the in-memory [pharox.Storage]. Create it with [New]; the zero
// value is not usable. All methods are safe for concurrent use.
type Store struct {
	mu        sync.Mutex
	now       func() time.Time
	retention int
	closed    bool

	pools     map[uuid.UUID]*poolState
	poolNames map[string]*poolState
	proxies   map[uuid.UUID]*proxyState
	proxyKeys map[proxyKey]*proxyState
	// table holds every stored proxy at its idx, so index items can name
	// proxies without pointers; freeIdx lists the holes deletions left.
	table         []*proxyState
	freeIdx       []uint32
	consumers     map[uuid.UUID]*consumerState
	consumerNames map[string]*consumerState
	// slots holds every lease record, active, retained or free for reuse;
	// a lease id carries its slot (see leaseID), so finding a lease is an
	// index, not a hash lookup in a table as large as the lease history.
	slots     []*leaseState
	freeSlots []uint32
	slotMask  uint32
	// chosen finds the leases whose id the caller chose
	// (AcquireRequest.LeaseID): such an id names no slot.
	chosen map[uuid.UUID]*leaseState
	expiry expiryHeap
	ended  leaseRing
	seq    uint64
	// keys holds the API keys and the audit log.
	keys keyTable
	// last is the latest time an operation used; see lockNoReap.
	last time.Time

	// scan is reused by every candidate search (under mu) so that passing
	// its methods to the b-tree iterators does not allocate per call.
	// cooling holds, per target, the proxies (by table index) with a
	// cool-down for it and when it ends (Unix µs); see target.go.
	cooling map[string]map[uint32]int64
	// targeted holds the proxies with per-target entries.
	targeted map[*proxyState]struct{}

	// quotas holds every quota; the consumer's, pool's or proxy's state
	// points to its own too, so an acquisition finds them without a
	// lookup. spent holds the proxies over their traffic allowance (by
	// table index) and until when (Unix µs); usage holds the hourly
	// buckets by hour (Unix seconds). See usage.go.
	quotas map[quotaKey]*pharox.Quota
	spent  map[uint32]int64
	usage  map[int64]map[usageKey]*usageSums

	scan      scanner
	visitFA   func(faItem) bool
	visitLU   func(luItem) bool
	visitRR   func(idItem) bool
	visitPast func(idItem) bool
	visitUpTo func(idItem) bool
}

// proxyKey is what makes two proxies duplicates.
type proxyKey struct {
	pool     uuid.UUID
	protocol pharox.Protocol
	host     string
	port     int
	user     string
}

func keyOf(p *pharox.Proxy) proxyKey {
	k := proxyKey{pool: p.PoolID, protocol: p.Protocol, host: p.Host, port: p.Port}
	if p.Credentials != nil {
		k.user = p.Credentials.User
	}
	return k
}

var _ pharox.Storage = (*Store)(nil)

// New returns an empty store configured by opts. It fails only when an
// option is invalid, with that option's error (wrapping
// [pharox.ErrInvalidArgument]); nil options are ignored.
func New(opts ...Option) (*Store, error) {
	cfg := config{now: time.Now, retention: DefaultEndedLeaseRetention, budget: DefaultFilterScanBudget}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	s := &Store{
		now:           cfg.now,
		retention:     cfg.retention,
		scan:          scanner{budget: cfg.budget},
		pools:         make(map[uuid.UUID]*poolState),
		poolNames:     make(map[string]*poolState),
		proxies:       make(map[uuid.UUID]*proxyState),
		proxyKeys:     make(map[proxyKey]*proxyState),
		consumers:     make(map[uuid.UUID]*consumerState),
		consumerNames: make(map[string]*consumerState),
	}
	mask := newID()
	s.slotMask = binary.BigEndian.Uint32(mask[:4])
	s.visitFA = s.scan.visitFA
	s.visitLU = s.scan.visitLU
	s.visitRR = s.scan.visitRR
	s.visitPast = s.scan.visitPast
	s.visitUpTo = s.scan.visitUpTo
	return s, nil
}

// newID returns a random (version 4) UUID. It reads crypto/rand directly:
// uuid.New costs twice as much and an allocation, and its faster pool mode
// is a process-wide switch a library must not flip.
func newID() uuid.UUID {
	var id uuid.UUID
	_, _ = rand.Read(id[:]) // never fails on supported platforms (Go 1.24+)
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	return id
}

// lock takes the store's lock and reclaims expired leases, returning the
// store's time for the operation. On error the lock is not held.
func (s *Store) lock(ctx context.Context) (time.Time, error) {
	now, err := s.lockNoReap(ctx)
	if err == nil {
		s.reap(now)
	}
	return now, err
}

// lockNoReap takes the store's lock and returns the operation's time. The
// clock is read before locking, to keep the critical section short, and
// then raised to the latest time any operation stamped: so stamps follow
// the order in which operations held the lock, and a slot freed at t is
// never taken again before t, even if the wall clock steps back.
func (s *Store) lockNoReap(ctx context.Context) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return time.Time{}, ErrClosed
	}
	if now.Before(s.last) {
		now = s.last
	} else {
		s.last = now
	}
	return now, nil
}

// Ping reports ErrClosed after Close and nil otherwise.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.lock(ctx); err != nil {
		return fmt.Errorf("memory: ping: %w", err)
	}
	s.mu.Unlock()
	return nil
}

// Close marks the store closed; later operations return ErrClosed. Closing
// twice is not an error.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// EnsureConsumer returns the consumer with this name, creating it if needed.
func (s *Store) EnsureConsumer(ctx context.Context, name string) (*pharox.Consumer, error) {
	if err := pharox.ValidateName("consumer name", name); err != nil {
		return nil, fmt.Errorf("memory: ensure consumer: %w", err)
	}
	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: ensure consumer: %w", err)
	}
	defer s.mu.Unlock()
	cs := s.consumerNames[name]
	if cs == nil {
		cs = &consumerState{c: pharox.Consumer{ID: newID(), Name: name, CreatedAt: now}}
		s.consumers[cs.c.ID] = cs
		s.consumerNames[name] = cs
	}
	out := cs.c
	return &out, nil
}

// GetConsumer returns the consumer by id (ErrConsumerNotFound).
func (s *Store) GetConsumer(ctx context.Context, id uuid.UUID) (*pharox.Consumer, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, fmt.Errorf("memory: get consumer: %w", err)
	}
	defer s.mu.Unlock()
	cs := s.consumers[id]
	if cs == nil {
		return nil, fmt.Errorf("memory: get consumer %s: %w", id, pharox.ErrConsumerNotFound)
	}
	out := cs.c
	return &out, nil
}

// ListConsumers returns every consumer ordered by name.
func (s *Store) ListConsumers(ctx context.Context) ([]*pharox.Consumer, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, fmt.Errorf("memory: list consumers: %w", err)
	}
	out := make([]*pharox.Consumer, 0, len(s.consumers))
	for _, cs := range s.consumers {
		cp := cs.c
		out = append(out, &cp)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b *pharox.Consumer) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// CreatePool stores a new pool; a zero ID gets a fresh one.
func (s *Store) CreatePool(ctx context.Context, pool pharox.Pool) (*pharox.Pool, error) {
	if err := pool.Validate(); err != nil {
		return nil, fmt.Errorf("memory: create pool: %w", err)
	}
	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: create pool: %w", err)
	}
	defer s.mu.Unlock()
	if s.poolNames[pool.Name] != nil {
		return nil, fmt.Errorf("memory: create pool %q: %w", pool.Name, pharox.ErrAlreadyExists)
	}
	if pool.ID == uuid.Nil {
		pool.ID = newID()
	} else if s.pools[pool.ID] != nil {
		return nil, fmt.Errorf("memory: create pool %q: id %s: %w", pool.Name, pool.ID, pharox.ErrAlreadyExists)
	}
	pool.CreatedAt = now
	pl := newPoolState(pool)
	s.pools[pool.ID] = pl
	s.poolNames[pool.Name] = pl
	return &pool, nil
}

// GetPool returns the pool by id.
func (s *Store) GetPool(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, fmt.Errorf("memory: get pool: %w", err)
	}
	defer s.mu.Unlock()
	pl := s.pools[id]
	if pl == nil {
		return nil, fmt.Errorf("memory: get pool %s: %w", id, pharox.ErrPoolNotFound)
	}
	out := pl.pool
	return &out, nil
}

// GetPoolByName returns the pool by name.
func (s *Store) GetPoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, fmt.Errorf("memory: get pool: %w", err)
	}
	defer s.mu.Unlock()
	pl := s.poolNames[name]
	if pl == nil {
		return nil, fmt.Errorf("memory: get pool %q: %w", name, pharox.ErrPoolNotFound)
	}
	out := pl.pool
	return &out, nil
}

// ListPools returns every pool ordered by name.
func (s *Store) ListPools(ctx context.Context) ([]*pharox.Pool, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, fmt.Errorf("memory: list pools: %w", err)
	}
	out := make([]*pharox.Pool, 0, len(s.pools))
	for _, pl := range s.pools {
		p := pl.pool
		out = append(out, &p)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b *pharox.Pool) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// DeletePool deletes the pool with its proxies, their ended leases and its
// session bindings; ErrInUse while any proxy has an active lease.
func (s *Store) DeletePool(ctx context.Context, id uuid.UUID) error {
	if _, err := s.lock(ctx); err != nil {
		return fmt.Errorf("memory: delete pool: %w", err)
	}
	defer s.mu.Unlock()
	pl := s.pools[id]
	if pl == nil {
		return fmt.Errorf("memory: delete pool %s: %w", id, pharox.ErrPoolNotFound)
	}
	if pl.leases > 0 {
		return fmt.Errorf("memory: delete pool %q: %d active leases: %w", pl.pool.Name, pl.leases, pharox.ErrInUse)
	}
	for _, ps := range pl.proxies {
		// Their ended leases become unreachable: GetLease and ListLeases
		// skip leases of deleted proxies, and the retention ring frees
		// them in turn.
		ps.deleted = true
		delete(s.proxies, ps.p.ID)
		delete(s.proxyKeys, keyOf(&ps.p))
		s.unplace(ps)
	}
	s.dropQuota(quotaKey{pharox.QuotaPool, id})
	pl.deleted = true
	delete(s.pools, id)
	delete(s.poolNames, pl.pool.Name)
	return nil
}

// AddProxies stores new proxies, all or none.
func (s *Store) AddProxies(ctx context.Context, proxies []pharox.Proxy) ([]*pharox.Proxy, error) {
	// Copy, normalize and validate outside the lock: it needs no state.
	states := make([]proxyState, len(proxies))
	for i := range proxies {
		ps := &states[i]
		ps.p = *proxies[i].Clone()
		p := &ps.p
		p.Normalize()
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("memory: add proxies: proxy %d (%s): %w", i, p.Address(), err)
		}
		p.CurrentLeases = 0
		p.CheckedAt, p.StatusChangedAt = nil, nil
		p.LatencyMS, p.LastError, p.LastStatusCode, p.FailureStreak = 0, "", 0, 0
		if p.ID == uuid.Nil {
			p.ID = newID()
		}
	}
	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: add proxies: %w", err)
	}
	defer s.mu.Unlock()
	ids := make(map[uuid.UUID]struct{}, len(states))
	keys := make(map[proxyKey]struct{}, len(states))
	for i := range states {
		p := &states[i].p
		if s.pools[p.PoolID] == nil {
			return nil, fmt.Errorf("memory: add proxies: proxy %d (%s): pool %s: %w", i, p.Address(), p.PoolID, pharox.ErrPoolNotFound)
		}
		if _, dup := ids[p.ID]; dup || s.proxies[p.ID] != nil {
			return nil, fmt.Errorf("memory: add proxies: proxy %d (%s): id %s: %w", i, p.Address(), p.ID, pharox.ErrAlreadyExists)
		}
		k := keyOf(p)
		if _, dup := keys[k]; dup || s.proxyKeys[k] != nil {
			return nil, fmt.Errorf("memory: add proxies: proxy %d (%s): %w", i, p, pharox.ErrAlreadyExists)
		}
		ids[p.ID] = struct{}{}
		keys[k] = struct{}{}
	}
	out := make([]*pharox.Proxy, len(states))
	for i := range states {
		ps := &states[i]
		ps.p.CreatedAt = now
		s.place(ps)
		s.pools[ps.p.PoolID].addProxy(ps)
		s.proxies[ps.p.ID] = ps
		s.proxyKeys[keyOf(&ps.p)] = ps
		out[i] = ps.p.Clone()
	}
	return out, nil
}

// GetProxy returns the proxy by id.
func (s *Store) GetProxy(ctx context.Context, id uuid.UUID) (*pharox.Proxy, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, fmt.Errorf("memory: get proxy: %w", err)
	}
	ps := s.proxies[id]
	if ps == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: get proxy %s: %w", id, pharox.ErrProxyNotFound)
	}
	snap := ps.p
	s.mu.Unlock()
	return snap.Clone(), nil
}

// ListProxies returns the pool's proxies ordered by id.
func (s *Store) ListProxies(ctx context.Context, poolID uuid.UUID) ([]*pharox.Proxy, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, fmt.Errorf("memory: list proxies: %w", err)
	}
	pl := s.pools[poolID]
	if pl == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: list proxies of pool %s: %w", poolID, pharox.ErrPoolNotFound)
	}
	// Shallow copies under the lock; stored pointer fields are never
	// mutated in place, so deep-copying them after unlocking is safe.
	snaps := make([]pharox.Proxy, 0, len(pl.proxies))
	for _, ps := range pl.proxies {
		snaps = append(snaps, ps.p)
	}
	s.mu.Unlock()
	slices.SortFunc(snaps, func(a, b pharox.Proxy) int { return compareUUID(a.ID, b.ID) })
	out := make([]*pharox.Proxy, len(snaps))
	for i := range snaps {
		out[i] = snaps[i].Clone()
	}
	return out, nil
}

func compareUUID(a, b uuid.UUID) int {
	for i := range a {
		if c := cmp.Compare(a[i], b[i]); c != 0 {
			return c
		}
	}
	return 0
}

// SetProxyStatus sets a proxy's status by hand and resets its failure
// streak. Existing leases stay until released.
func (s *Store) SetProxyStatus(ctx context.Context, id uuid.UUID, status pharox.ProxyStatus) (*pharox.Proxy, error) {
	if !status.Valid() {
		return nil, fmt.Errorf("memory: set proxy status: %w: unknown status %q (want active, slow, inactive or banned)", pharox.ErrInvalidArgument, status)
	}
	now, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: set proxy status: %w", err)
	}
	ps := s.proxies[id]
	if ps == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("memory: set proxy status %s: %w", id, pharox.ErrProxyNotFound)
	}
	ps.pool.update(ps, func(p *pharox.Proxy) {
		p.FailureStreak = 0
		if p.Status != status {
			p.Status = status
			// A new pointer, never a write through the old one: snapshots
			// taken under the lock share it.
			changed := now
			p.StatusChangedAt = &changed
		}
	})
	snap := ps.p
	s.mu.Unlock()
	return snap.Clone(), nil
}

// DeleteProxy deletes a proxy and its ended leases; ErrInUse while it has an
// active lease.
func (s *Store) DeleteProxy(ctx context.Context, id uuid.UUID) error {
	if _, err := s.lock(ctx); err != nil {
		return fmt.Errorf("memory: delete proxy: %w", err)
	}
	defer s.mu.Unlock()
	ps := s.proxies[id]
	if ps == nil {
		return fmt.Errorf("memory: delete proxy %s: %w", id, pharox.ErrProxyNotFound)
	}
	if ps.p.CurrentLeases > 0 {
		return fmt.Errorf("memory: delete proxy %s: %d active leases: %w", id, ps.p.CurrentLeases, pharox.ErrInUse)
	}
	ps.pool.removeProxy(ps)
	delete(s.proxies, id)
	delete(s.proxyKeys, keyOf(&ps.p))
	s.unplace(ps)
	return nil
}

// place gives ps a slot in the proxy table.
func (s *Store) place(ps *proxyState) {
	if n := len(s.freeIdx); n > 0 {
		ps.idx = s.freeIdx[n-1]
		s.freeIdx = s.freeIdx[:n-1]
		s.table[ps.idx] = ps
		return
	}
	ps.idx = uint32(len(s.table))
	s.table = append(s.table, ps)
}

// unplace frees ps's slot; no index may still hold it.
func (s *Store) unplace(ps *proxyState) {
	s.dropTargets(ps)
	s.dropProxyQuota(ps)
	s.table[ps.idx] = nil
	s.freeIdx = append(s.freeIdx, ps.idx)
}

// ApplyHealthCheckResult applies r to its proxy following
// [pharox.Proxy.ApplyHealthCheck]. An unknown proxy gives (nil, nil).
func (s *Store) ApplyHealthCheckResult(ctx context.Context, r pharox.HealthCheckResult) (*pharox.Proxy, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("memory: apply health check: %w", err)
	}
	_, err := s.lock(ctx)
	if err != nil {
		return nil, fmt.Errorf("memory: apply health check: %w", err)
	}
	ps := s.proxies[r.ProxyID]
	if ps == nil {
		s.mu.Unlock()
		return nil, nil
	}
	// A zero CheckedAt is stored as such, like every store does: the
	// oldest possible check, not this store's clock.
	r.CheckedAt = r.CheckedAt.UTC().Truncate(time.Microsecond)
	// ApplyHealthCheck replaces CheckedAt and StatusChangedAt with new
	// pointers rather than writing through them, which keeps snapshots
	// shared with other goroutines valid.
	ps.pool.update(ps, func(p *pharox.Proxy) { p.ApplyHealthCheck(r) })
	snap := ps.p
	s.mu.Unlock()
	return snap.Clone(), nil
}
