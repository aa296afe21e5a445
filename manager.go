package pharox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
)

// DefaultConsumerName is the consumer that leases are taken for when
// AcquireOptions.Consumer is empty. The Manager creates it on first use.
const DefaultConsumerName = "default"

// Defaults and limits applied by the Manager.
const (
	// DefaultLeaseDuration is used when AcquireOptions.Duration is zero.
	DefaultLeaseDuration = 5 * time.Minute
	// MaxLeaseDuration is the longest lease the Manager grants; longer
	// requests fail with ErrInvalidArgument rather than being cut short.
	MaxLeaseDuration = 7 * 24 * time.Hour
	// DefaultSessionTTL is how long a sticky session binding lives when
	// AcquireOptions.SessionTTL is zero.
	DefaultSessionTTL = 10 * time.Minute
	// MaxSessionKeyLength bounds sticky session keys.
	MaxSessionKeyLength = 256
)

// AcquireOptions tunes one acquisition. The zero value leases from the
// default consumer for DefaultLeaseDuration with FirstAvailable.
type AcquireOptions struct {
	// Consumer names the consumer; empty means DefaultConsumerName. It is
	// created on first use.
	Consumer string
	// Duration is the lease length: zero means DefaultLeaseDuration;
	// negative or above MaxLeaseDuration is an error.
	Duration time.Duration
	// Filters narrows candidates; nil does not filter.
	Filters *Filters
	// Strategy orders candidates; empty means FirstAvailable.
	Strategy Strategy
	// SessionKey makes the lease sticky: while the session lives the same
	// key gets the same proxy if it can take another lease.
	SessionKey string
	// SessionTTL is how long the session binding lives after each use:
	// zero means DefaultSessionTTL; negative is an error.
	SessionTTL time.Duration
	// LeaseID, when set, is the id the new lease gets, and makes the
	// acquisition idempotent: acquiring again with an id the store already
	// holds a lease for returns that lease (as it is now, active or ended)
	// instead of taking a second slot. A retry after a lost answer, from
	// any process sharing the store, therefore never leaks a slot. The id
	// must be a fresh random or name-based UUID per logical acquisition;
	// zero means the store picks one.
	LeaseID uuid.UUID
	// Target, when set, is the site the lease is for (a host name,
	// host:port, IP or URL; see NormalizeTarget): proxies cooling down for
	// it (see [TargetPolicy]) are skipped. Empty means any proxy. A store
	// without per-target health gives ErrUnsupported.
	Target string
}

// AcquireEvent describes one acquisition attempt, successful or not.
type AcquireEvent struct {
	// Lease is the new lease, or nil on a miss or error.
	Lease    *Lease
	Pool     string
	Consumer string
	Filters  *Filters
	Strategy Strategy
	// Target is the normalized target of the acquisition, if any.
	Target   string
	Started  time.Time
	Finished time.Time
	Duration time.Duration
	// Err is nil on success, wraps ErrNoProxyAvailable on a miss.
	Err error
	// Stats is the pool's snapshot after the attempt; nil if it could not
	// be read.
	Stats *PoolStats
}

// ReleaseEvent describes one release.
type ReleaseEvent struct {
	Lease      *Lease
	Pool       string
	ReleasedAt time.Time
	// LeaseDuration is how long the lease was held.
	LeaseDuration time.Duration
	Stats         *PoolStats
}

// ManagerOption configures a Manager.
type ManagerOption func(*Manager)

// WithAcquireCallback registers fn to run after every acquisition attempt.
// Callbacks run synchronously on the caller's goroutine: keep them fast.
func WithAcquireCallback(fn func(context.Context, AcquireEvent)) ManagerOption {
	return func(m *Manager) { m.onAcquire = append(m.onAcquire, fn) }
}

// WithReleaseCallback registers fn to run after every release.
func WithReleaseCallback(fn func(context.Context, ReleaseEvent)) ManagerOption {
	return func(m *Manager) { m.onRelease = append(m.onRelease, fn) }
}

// WithLogger sets the logger for errors the Manager cannot return (for
// example a failed release after a panic). The default, and what a nil
// logger means, is slog.Default().
func WithLogger(l *slog.Logger) ManagerOption {
	return func(m *Manager) {
		if l != nil {
			m.logger = l
		}
	}
}

// WithOutcomePolicy sets how ReportOutcome turns consumers' outcomes into
// health results. The default is DefaultOutcomePolicy(). A policy that
// fails [OutcomePolicy.Validate] makes the Manager invalid (see
// NewManager).
func WithOutcomePolicy(p OutcomePolicy) ManagerOption {
	return func(m *Manager) {
		p.BanStatusCodes = slices.Clone(p.BanStatusCodes)
		m.outcomes = p
	}
}

// Manager holds the business rules of leasing: validation, defaults,
// consumers, waiting, events. It keeps no state of its own beyond caches
// and the per-target outcome verdicts it counted (see ReportOutcome), so
// any number of
// Managers in any number of processes may share a store.
type Manager struct {
	store     Storage
	onAcquire []func(context.Context, AcquireEvent)
	onRelease []func(context.Context, ReleaseEvent)
	logger    *slog.Logger
	outcomes  OutcomePolicy
	targets   TargetPolicy
	guard     banGuard
	verdicts  verdictLog
	// purgeMu guards nextTargetPurge (see CleanupExpiredLeases).
	purgeMu         sync.Mutex
	nextTargetPurge time.Time
	// invalid is the configuration error NewManager found, if any: every
	// method then returns it instead of working with that configuration.
	invalid error

	// consumers caches consumer ids by name: consumers are never deleted,
	// so an id once seen stays valid.
	consumers sync.Map
}

// NewManager returns a Manager over store, configured by opts.
//
// It validates its configuration the way a constructor returning an error
// would, without making every caller handle one: when store is nil or an
// option is out of range, Err returns an error wrapping ErrInvalidArgument
// that names the setting, and every method returns that error instead of
// doing any work. Check Err once after construction when the options come
// from user input; nil options are ignored.
func NewManager(store Storage, opts ...ManagerOption) *Manager {
	m := &Manager{store: store, logger: slog.Default(), outcomes: DefaultOutcomePolicy(), targets: DefaultTargetPolicy()}
	for _, o := range opts {
		if o != nil {
			o(m)
		}
	}
	m.invalid = m.validate()
	return m
}

// validate checks the configuration once the options are applied.
func (m *Manager) validate() error {
	if m.store == nil {
		return fmt.Errorf("%w: manager: store is nil", ErrInvalidArgument)
	}
	if err := m.outcomes.Validate(); err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	if err := m.targets.Validate(); err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	return nil
}

// Err returns the configuration error NewManager found, or nil when the
// Manager is usable. A Manager with an error refuses every call with it.
func (m *Manager) Err() error { return m.invalid }

// Storage returns the store the Manager uses.
func (m *Manager) Storage() Storage { return m.store }

// ensureConsumer returns the id of the named consumer for an acquisition
// from pool, creating the consumer once. The pool is checked first, so an
// acquisition from an unknown pool creates nothing: otherwise anyone who
// may acquire could add consumers without bound by naming made-up pools.
// (Once the id is cached the store's AcquireLease reports the unknown
// pool, with no extra round trip.)
func (m *Manager) ensureConsumer(ctx context.Context, pool, name string) (uuid.UUID, error) {
	if id, ok := m.consumers.Load(name); ok {
		return id.(uuid.UUID), nil
	}
	if _, err := m.store.GetPoolByName(ctx, pool); err != nil {
		return uuid.Nil, fmt.Errorf("acquire from pool %q: %w", pool, err)
	}
	c, err := m.store.EnsureConsumer(ctx, name)
	if err != nil {
		return uuid.Nil, fmt.Errorf("ensure consumer %q: %w", name, err)
	}
	m.consumers.Store(name, c.ID)
	return c.ID, nil
}

// EnsureConsumer returns the named consumer, creating it if needed.
func (m *Manager) EnsureConsumer(ctx context.Context, name string) (*Consumer, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	if err := ValidateName("consumer name", name); err != nil {
		return nil, err
	}
	return m.store.EnsureConsumer(ctx, name)
}

// buildRequest validates opts and applies the documented defaults.
func (m *Manager) buildRequest(ctx context.Context, pool string, opts *AcquireOptions) (AcquireRequest, error) {
	var o AcquireOptions
	if opts != nil {
		o = *opts
	}
	req := AcquireRequest{
		PoolName:     pool,
		ConsumerName: o.Consumer,
		Duration:     o.Duration,
		Strategy:     o.Strategy.OrDefault(),
		SessionKey:   o.SessionKey,
		SessionTTL:   o.SessionTTL,
		LeaseID:      o.LeaseID,
	}
	if m.invalid != nil {
		return req, m.invalid
	}
	if err := ValidateName("pool name", pool); err != nil {
		return req, err
	}
	if req.ConsumerName == "" {
		req.ConsumerName = DefaultConsumerName
	}
	if err := ValidateName("consumer name", req.ConsumerName); err != nil {
		return req, err
	}
	switch {
	case req.Duration == 0:
		req.Duration = DefaultLeaseDuration
	case req.Duration < 0:
		return req, fmt.Errorf("%w: lease duration must be positive, got %v", ErrInvalidArgument, req.Duration)
	case req.Duration > MaxLeaseDuration:
		return req, fmt.Errorf("%w: lease duration %v exceeds the maximum %v", ErrInvalidArgument, req.Duration, MaxLeaseDuration)
	}
	if !req.Strategy.Valid() {
		return req, fmt.Errorf("%w: unknown strategy %q (want first_available, least_used, round_robin or random)", ErrInvalidArgument, o.Strategy)
	}
	if len(req.SessionKey) > MaxSessionKeyLength {
		return req, fmt.Errorf("%w: session key longer than %d bytes", ErrInvalidArgument, MaxSessionKeyLength)
	}
	switch {
	case req.SessionTTL < 0:
		return req, fmt.Errorf("%w: session ttl must be positive, got %v", ErrInvalidArgument, req.SessionTTL)
	case req.SessionTTL == 0 && req.SessionKey != "":
		req.SessionTTL = DefaultSessionTTL
	case req.SessionTTL > MaxLeaseDuration:
		return req, fmt.Errorf("%w: session ttl %v exceeds the maximum %v", ErrInvalidArgument, req.SessionTTL, MaxLeaseDuration)
	}
	if o.Target != "" {
		t, err := NormalizeTarget(o.Target)
		if err != nil {
			return req, err
		}
		req.Target = t
	}
	if !o.Filters.IsZero() {
		f := o.Filters.NormalizedClone()
		if err := f.Validate(); err != nil {
			return req, err
		}
		req.Filters = f
	}
	id, err := m.ensureConsumer(ctx, pool, req.ConsumerName)
	if err != nil {
		return req, err
	}
	req.ConsumerID = id
	return req, nil
}

// Acquire leases a proxy from the named pool. On a miss it returns an error
// wrapping ErrNoProxyAvailable; it never returns a nil lease with a nil
// error.
func (m *Manager) Acquire(ctx context.Context, pool string, opts *AcquireOptions) (*Lease, error) {
	var started time.Time
	if len(m.onAcquire) > 0 {
		started = time.Now()
	}
	req, err := m.buildRequest(ctx, pool, opts)
	if err != nil {
		return nil, err
	}
	lease, err := m.store.AcquireLease(ctx, req)
	err = nameQuotaError(err, &req)
	m.emitAcquire(ctx, &req, lease, err, started)
	if err != nil {
		return nil, fmt.Errorf("acquire from pool %q: %w", pool, err)
	}
	return lease, nil
}

// AcquireWait is Acquire that, while no proxy is available, waits and tries
// again until one is or ctx ends. Waiting polls storage with jittered
// exponential backoff (5 ms to 250 ms), so it works across processes. When
// ctx ends first the error wraps both ErrNoProxyAvailable and ctx.Err().
//
// A consumer or pool at its max_concurrent_leases or out of request tokens
// is waited for the same way (no sooner than the quota's RetryAfter); if
// ctx ends while a quota still refuses, the error is that *QuotaError
// (ErrQuotaExceeded) joined with ctx.Err(). Byte quotas, which last until
// the day or month ends, fail at once.
func (m *Manager) AcquireWait(ctx context.Context, pool string, opts *AcquireOptions) (*Lease, error) {
	started := time.Now()
	req, err := m.buildRequest(ctx, pool, opts)
	if err != nil {
		return nil, err
	}
	backoff := 5 * time.Millisecond
	var timer *time.Timer
	var refused *QuotaError
	for ctx.Err() == nil {
		lease, err := m.store.AcquireLease(ctx, req)
		if err != nil && ctx.Err() != nil {
			// The wait ran out during the store call: that is a miss like
			// any other, not a storage failure.
			break
		}
		err = nameQuotaError(err, &req)
		wait := backoff/2 + rand.N(backoff/2+1)
		refused = nil
		if qe, ok := errors.AsType[*QuotaError](err); ok && qe.waitable() {
			refused = qe
			wait = max(wait, qe.RetryAfter)
		} else if err == nil || !errors.Is(err, ErrNoProxyAvailable) {
			m.emitAcquire(ctx, &req, lease, err, started)
			if err != nil {
				return nil, fmt.Errorf("acquire from pool %q: %w", pool, err)
			}
			return lease, nil
		}
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
		case <-timer.C:
			backoff = min(backoff*2, 250*time.Millisecond)
		}
	}
	if refused != nil {
		err = fmt.Errorf("acquire from pool %q: waited %v: %w", pool, time.Since(started).Round(time.Millisecond), errors.Join(refused, ctx.Err()))
	} else {
		err = fmt.Errorf("acquire from pool %q: waited %v: %w: %w", pool, time.Since(started).Round(time.Millisecond), ErrNoProxyAvailable, ctx.Err())
	}
	m.emitAcquire(context.WithoutCancel(ctx), &req, nil, err, started)
	return nil, err
}

func (m *Manager) emitAcquire(ctx context.Context, req *AcquireRequest, lease *Lease, err error, started time.Time) {
	if len(m.onAcquire) == 0 {
		return
	}
	finished := time.Now()
	ev := AcquireEvent{
		Lease: lease, Pool: req.PoolName, Consumer: req.ConsumerName, Filters: req.Filters,
		Strategy: req.Strategy, Target: req.Target, Started: started, Finished: finished,
		Duration: finished.Sub(started), Err: err,
	}
	ev.Stats = m.stats(ctx, req.PoolName)
	for _, fn := range m.onAcquire {
		fn(ctx, ev)
	}
}

func (m *Manager) stats(ctx context.Context, pool string) *PoolStats {
	s, err := m.store.GetPoolStats(ctx, pool)
	if err != nil {
		return nil
	}
	return s
}

// Release ends the lease and frees its slot. Releasing a lease that already
// ended gives an error wrapping ErrLeaseNotActive.
func (m *Manager) Release(ctx context.Context, leaseID uuid.UUID) (*Lease, error) {
	return m.release(ctx, leaseID, nil)
}

// ReleaseWithUsage is Release with the traffic the lease carried: the
// ended lease records it and the store adds it to the usage aggregates and
// to the byte counters of the quotas involved, once (a retried release
// counts nothing again). Errors: ErrInvalidArgument for a negative or
// absurd counter (see Usage.Validate), and those of Release.
func (m *Manager) ReleaseWithUsage(ctx context.Context, leaseID uuid.UUID, usage Usage) (*Lease, error) {
	if err := usage.Validate(); err != nil {
		return nil, fmt.Errorf("release lease %s: %w", leaseID, err)
	}
	return m.release(ctx, leaseID, &usage)
}

func (m *Manager) release(ctx context.Context, leaseID uuid.UUID, usage *Usage) (*Lease, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	lease, err := m.store.ReleaseLease(ctx, leaseID, usage)
	if err != nil {
		return nil, fmt.Errorf("release lease %s: %w", leaseID, err)
	}
	if len(m.onRelease) > 0 {
		ev := ReleaseEvent{Lease: lease, Pool: lease.PoolName, ReleasedAt: time.Now()}
		if lease.ReleasedAt != nil {
			ev.ReleasedAt = *lease.ReleasedAt
		}
		ev.LeaseDuration = ev.ReleasedAt.Sub(lease.AcquiredAt)
		ev.Stats = m.stats(ctx, lease.PoolName)
		for _, fn := range m.onRelease {
			fn(ctx, ev)
		}
	}
	return lease, nil
}

// Renew extends an active lease to expire d from now.
func (m *Manager) Renew(ctx context.Context, leaseID uuid.UUID, d time.Duration) (*Lease, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	if d <= 0 || d > MaxLeaseDuration {
		return nil, fmt.Errorf("%w: renew duration must be in (0, %v], got %v", ErrInvalidArgument, MaxLeaseDuration, d)
	}
	lease, err := m.store.RenewLease(ctx, leaseID, d)
	if err != nil {
		return nil, fmt.Errorf("renew lease %s: %w", leaseID, err)
	}
	m.verdicts.extend(leaseID, lease.ExpiresAt)
	return lease, nil
}

// WithLease acquires a lease, runs fn with it and always releases it: on
// success, on error and on panic (the panic then continues). The release
// runs even if ctx was cancelled. A failed release is joined to fn's error.
func (m *Manager) WithLease(ctx context.Context, pool string, opts *AcquireOptions, fn func(context.Context, *Lease) error) (err error) {
	lease, err := m.Acquire(ctx, pool, opts)
	if err != nil {
		return err
	}
	defer func() {
		_, relErr := m.Release(context.WithoutCancel(ctx), lease.ID)
		if p := recover(); p != nil {
			if relErr != nil {
				m.logger.Error("pharox: release after panic failed", "lease", lease.ID, "err", relErr)
			}
			panic(p)
		}
		if relErr != nil {
			err = errors.Join(err, relErr)
		}
	}()
	return fn(ctx, lease)
}

// CleanupExpiredLeases ends every lease past its expiry and returns how
// many it ended. At most once a minute per Manager it also purges
// per-target entries idle for longer than the target policy's Retention
// (see PurgeTargetStates); a failure of that purge is logged, not
// returned.
func (m *Manager) CleanupExpiredLeases(ctx context.Context) (int, error) {
	if m.invalid != nil {
		return 0, m.invalid
	}
	n, err := m.store.CleanupExpiredLeases(ctx)
	if err != nil {
		return n, err
	}
	if m.targetPurgeDue(time.Now()) {
		if _, perr := m.PurgeTargetStates(ctx); perr != nil {
			m.logger.WarnContext(ctx, "pharox: purging per-target entries failed", "error", perr)
		}
	}
	return n, nil
}

// targetPurgeEvery is how often CleanupExpiredLeases purges target entries.
const targetPurgeEvery = time.Minute

// targetPurgeDue reports whether CleanupExpiredLeases should purge target
// entries now, and if so schedules the next purge.
func (m *Manager) targetPurgeDue(now time.Time) bool {
	m.purgeMu.Lock()
	defer m.purgeMu.Unlock()
	if now.Before(m.nextTargetPurge) {
		return false
	}
	m.nextTargetPurge = now.Add(targetPurgeEvery)
	return true
}

// PoolStats returns the named pool's occupancy.
func (m *Manager) PoolStats(ctx context.Context, pool string) (*PoolStats, error) {
	if m.invalid != nil {
		return nil, m.invalid
	}
	return m.store.GetPoolStats(ctx, pool)
}
