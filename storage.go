package pharox

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Storage is the persistence contract every driver implements. Drivers keep
// no business rules beyond the ones written here; the [Manager] validates
// input and applies defaults before calling them. Every driver passes
// storage/storagetest, which is the executable form of this contract.
//
// # Atomic acquisition
//
// There is deliberately no separate "create lease for this proxy" step.
// Choosing a proxy and taking its slot is one atomic operation,
// [LeaseStore.AcquireLease]: if finding and creating were two calls, two
// processes that found the same last free slot would both lease it. Drivers
// take the slot under their lock (memory), in one transaction with row locks
// that skip locked rows (SQL), or in one script (Redis). A proxy's
// CurrentLeases and the set of its active leases change together in that same
// operation, always. [LeaseStore.FindAvailableProxy] exists for previews and
// diagnostics only: its answer may be stale by the time it returns.
//
// # Expiry
//
// A lease whose ExpiresAt has passed stops counting against its proxy at the
// latest when the next operation touches that proxy; CleanupExpiredLeases
// reclaims the rest in bulk. Every lease ends exactly once, as released or
// expired, and ending it frees exactly one slot. Reads (GetProxy, GetLease,
// GetPoolStats, lists) may still show such a lease as active, and count it
// in CurrentLeases, until a write touches its proxy or a cleanup runs;
// drivers that reclaim on reads too are free to.
//
// # Copies
//
// Every value returned is the caller's own copy, and every value passed in
// is copied: mutating either never changes stored state.
//
// # Time
//
// Drivers stamp AcquiredAt, ExpiresAt and ReleasedAt with their own clock
// (the database's clock for shared stores), in UTC.
type Storage interface {
	LeaseStore
	AdminStore
	KeyStore
	TargetStore
	UsageStore
	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error
	// Close releases the driver's resources. Stores built on a caller's
	// connection pool do not close that pool.
	Close() error
}

// LeaseStore is the hot path: the operations a Manager calls per lease.
type LeaseStore interface {
	LeaseVerdictStore

	// EnsureConsumer returns the consumer with this name, creating it if
	// needed. Concurrent calls with one name return the same consumer.
	EnsureConsumer(ctx context.Context, name string) (*Consumer, error)

	// AcquireLease atomically chooses a proxy and leases one of its slots.
	//
	// Candidates are the proxies of the pool in a leasable status (active
	// or slow) with a free slot that match req.Filters; req.Strategy orders
	// them. With a SessionKey, the proxy bound to (pool, key) is taken first
	// while the binding is live and that proxy is still a candidate;
	// otherwise a proxy is chosen normally and the key is (re)bound to it.
	// Either way the binding then lives until now + SessionTTL.
	//
	// Errors: ErrPoolNotFound, ErrConsumerNotFound, ErrNoProxyAvailable,
	// ErrUnsupported (a Predicate filter in a store that cannot run Go),
	// ErrInvalidArgument, and a *QuotaError (ErrQuotaExceeded) when the
	// consumer or pool is over a quota (see [UsageStore]). The lease
	// records req.Target as Lease.Target. The returned lease carries a Proxy snapshot taken
	// after the slot was counted.
	AcquireLease(ctx context.Context, req AcquireRequest) (*Lease, error)

	// FindAvailableProxy returns the proxy AcquireLease would choose now,
	// without leasing it (ErrNoProxyAvailable when none, ErrPoolNotFound for
	// an unknown pool). It does not move the round-robin position or session
	// bindings.
	FindAvailableProxy(ctx context.Context, pool string, filters *Filters, strategy Strategy) (*Proxy, error)

	// ReleaseLease ends an active lease as released, frees its slot and
	// returns the ended lease. A non-nil usage (validated by the Manager)
	// is the holder's report: it becomes the ended lease's Usage and is
	// counted in the same operation (see [UsageStore]); nil reports
	// nothing and counts nothing. Errors: ErrLeaseNotFound, and
	// ErrLeaseNotActive for a lease already released or expired. A lease
	// past its ExpiresAt that nothing has reclaimed yet is the driver's
	// call: it is either released (postgres, sqlite) or reclaimed as
	// expired with ErrLeaseNotActive (memory, redis); either way exactly
	// one slot is freed, once.
	ReleaseLease(ctx context.Context, leaseID uuid.UUID, usage *Usage) (*Lease, error)

	// RenewLease moves an active, unexpired lease's ExpiresAt to now + d.
	// Errors: ErrLeaseNotFound, ErrLeaseNotActive (released, or past
	// ExpiresAt, in which case the lease is reclaimed as expired).
	RenewLease(ctx context.Context, leaseID uuid.UUID, d time.Duration) (*Lease, error)

	// CleanupExpiredLeases ends every active lease past its ExpiresAt as
	// expired, frees their slots, drops dead session bindings, and returns
	// how many leases it ended. It must not block acquisitions for long.
	CleanupExpiredLeases(ctx context.Context) (int, error)

	// GetPoolStats returns the pool's occupancy (ErrPoolNotFound). It must
	// not scan every lease; drivers keep counters or use indexes.
	GetPoolStats(ctx context.Context, pool string) (*PoolStats, error)

	// ApplyHealthCheckResult applies r to its proxy atomically, following
	// [Proxy.ApplyHealthCheck], and returns the updated proxy. An unknown
	// proxy (for example deleted mid-sweep) returns (nil, nil).
	ApplyHealthCheckResult(ctx context.Context, r HealthCheckResult) (*Proxy, error)
}

// AdminStore manages consumers, pools, proxies and lease records.
type AdminStore interface {
	// GetConsumer returns the consumer by id (ErrConsumerNotFound). A
	// consumer ensured through one process is found by its id through any
	// other process sharing the store.
	GetConsumer(ctx context.Context, id uuid.UUID) (*Consumer, error)
	// ListConsumers returns every consumer ordered by name.
	ListConsumers(ctx context.Context) ([]*Consumer, error)

	// CreatePool stores a new pool; a zero ID gets a fresh one. A name in
	// use gives ErrAlreadyExists.
	CreatePool(ctx context.Context, pool Pool) (*Pool, error)
	// GetPool returns the pool by id (ErrPoolNotFound).
	GetPool(ctx context.Context, id uuid.UUID) (*Pool, error)
	// GetPoolByName returns the pool by name (ErrPoolNotFound).
	GetPoolByName(ctx context.Context, name string) (*Pool, error)
	// ListPools returns every pool ordered by name.
	ListPools(ctx context.Context) ([]*Pool, error)
	// DeletePool deletes the pool with its proxies, their ended leases and
	// its session bindings. ErrPoolNotFound; ErrInUse while any of its
	// proxies has an active lease.
	DeletePool(ctx context.Context, id uuid.UUID) error

	// AddProxies stores new proxies, all or none: if any is invalid
	// (ErrInvalidArgument), duplicates another (same pool, protocol, host,
	// port and user: ErrAlreadyExists) or names an unknown pool
	// (ErrPoolNotFound), nothing is stored. Zero IDs get fresh ones;
	// CurrentLeases and health fields of the input are ignored except
	// Status (empty means active). Tags keep their order.
	AddProxies(ctx context.Context, proxies []Proxy) ([]*Proxy, error)
	// GetProxy returns the proxy by id (ErrProxyNotFound).
	GetProxy(ctx context.Context, id uuid.UUID) (*Proxy, error)
	// ListProxies returns the pool's proxies ordered by id (ErrPoolNotFound).
	ListProxies(ctx context.Context, poolID uuid.UUID) ([]*Proxy, error)
	// SetProxyStatus sets a proxy's status by hand, resets its failure
	// streak and stamps StatusChangedAt when the status changes
	// (ErrProxyNotFound). Existing leases stay until released.
	SetProxyStatus(ctx context.Context, id uuid.UUID, status ProxyStatus) (*Proxy, error)
	// DeleteProxy deletes a proxy and its ended leases. ErrProxyNotFound;
	// ErrInUse while it has an active lease.
	DeleteProxy(ctx context.Context, id uuid.UUID) error

	// GetLease returns a lease by id (ErrLeaseNotFound). Drivers may forget
	// ended leases after a retention period they document.
	GetLease(ctx context.Context, id uuid.UUID) (*Lease, error)
	// ListLeases returns the leases matching q, oldest AcquiredAt first.
	ListLeases(ctx context.Context, q LeaseQuery) ([]*Lease, error)
	// PurgeEndedLeases deletes released and expired leases that ended
	// before the given time and returns how many it deleted.
	PurgeEndedLeases(ctx context.Context, endedBefore time.Time) (int, error)
}

// AcquireRequest is what [LeaseStore.AcquireLease] needs. The Manager fills
// it in; drivers may assume a validated request with defaults applied.
type AcquireRequest struct {
	// PoolName names the pool to lease from.
	PoolName string
	// ConsumerID identifies an existing consumer (see EnsureConsumer).
	ConsumerID uuid.UUID
	// ConsumerName is recorded on the lease for callers and events.
	ConsumerName string
	// Duration is how long the lease lasts; positive.
	Duration time.Duration
	// Filters narrows candidates; nil does not filter. Normalized.
	Filters *Filters
	// Strategy orders candidates; never empty after validation.
	Strategy Strategy
	// SessionKey, when set, makes the lease sticky (see AcquireLease).
	SessionKey string
	// SessionTTL is how long the session binding lives; positive when
	// SessionKey is set.
	SessionTTL time.Duration
	// LeaseID, when not zero, is the id the new lease gets. If the store
	// already holds a lease with this id (active or ended, within its
	// retention), AcquireLease takes no slot and returns that lease as it
	// is now, provided it was taken from the same pool by the same
	// consumer; otherwise ErrAlreadyExists. This makes an acquisition
	// retried after a lost answer (a client or driver retry, from any
	// process) idempotent. Zero means the driver generates a fresh id.
	LeaseID uuid.UUID
	// Target, when set, is a normalized target (see NormalizeTarget):
	// proxies cooling down for it are not candidates (a sticky session's
	// bound proxy included). Only stores implementing [TargetStore] honour
	// it; the Manager sends it to no other store.
	Target string
}

// Validate checks a request as a driver receives it.
func (r *AcquireRequest) Validate() error {
	if err := ValidateName("pool name", r.PoolName); err != nil {
		return err
	}
	if r.ConsumerID == uuid.Nil {
		return fmt.Errorf("%w: consumer id is empty", ErrInvalidArgument)
	}
	if r.Duration <= 0 {
		return fmt.Errorf("%w: lease duration must be positive, got %v", ErrInvalidArgument, r.Duration)
	}
	if !r.Strategy.Valid() || r.Strategy == "" {
		return fmt.Errorf("%w: unknown strategy %q", ErrInvalidArgument, r.Strategy)
	}
	if r.Target != "" {
		if !ValidNormalizedTarget(r.Target) {
			return fmt.Errorf("%w: target %q is not a normalized target", ErrInvalidArgument, r.Target)
		}
	}
	if r.SessionKey != "" && r.SessionTTL <= 0 {
		return fmt.Errorf("%w: session ttl must be positive, got %v", ErrInvalidArgument, r.SessionTTL)
	}
	return r.Filters.Validate()
}

// LeaseQuery selects leases for [AdminStore.ListLeases]. Zero fields do not
// filter.
type LeaseQuery struct {
	PoolID     uuid.UUID
	ProxyID    uuid.UUID
	ConsumerID uuid.UUID
	Status     LeaseStatus
	// Limit caps the number of leases returned; 0 means no limit.
	Limit int
}
