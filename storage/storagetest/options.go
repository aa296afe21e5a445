package storagetest

import "testing"

// Option adjusts how [Run] exercises a store.
type Option func(*config)

// config is what the options set; the zero value is not used, see
// defaultConfig.
type config struct {
	largePool       int
	largePoolReason string
	largePoolShort  bool
	caps            Capabilities
}

// DefaultLargePoolSize is how many proxies the LargePool section stores.
const DefaultLargePoolSize = 20000

func defaultConfig() config { return config{largePool: DefaultLargePoolSize, largePoolShort: true} }

// WithLargePoolSize changes how many proxies the LargePool section stores
// (at least 1,000). A store that lowers it must say why in reason, which
// the section logs: the section exists to show that answers stay right
// at the scale users run, so a smaller pool needs a documented cause.
func WithLargePoolSize(n int, reason string) Option {
	return func(c *config) {
		c.largePool = max(n, 1000)
		c.largePoolReason = reason
	}
}

// WithoutLargePoolInShort skips the LargePool section under go test
// -short. Seeding and leasing 20,000 proxies takes seconds on a server
// store; -short runs are for quick iterations, CI runs without it.
func WithoutLargePoolInShort() Option {
	return func(c *config) { c.largePoolShort = false }
}

func newConfig(opts []Option) config {
	c := defaultConfig()
	for _, o := range opts {
		o(&c)
	}
	return c
}

// skipLargePool skips t when the store opted out of the large pool in
// -short runs.
func (c config) skipLargePool(t *testing.T) {
	t.Helper()
	if testing.Short() && !c.largePoolShort {
		t.Skip("large-pool section skipped in -short (WithoutLargePoolInShort)")
	}
}

// Capabilities declares the behaviours the [pharox.Storage] contract
// leaves to the driver. Every store passes them to [Run] with
// [WithCapabilities], and the suite checks that the store does what it
// declares rather than accepting either answer: a store that drifts fails.
// A behaviour left undeclared fails the subtest that checks it, asking for
// the declaration.
type Capabilities struct {
	// LateRelease is what ReleaseLease does with a lease past its
	// ExpiresAt that nothing has reclaimed yet.
	LateRelease LateRelease
	// Predicates says whether the store runs Filters.Predicate or refuses
	// filters holding one with ErrUnsupported.
	Predicates PredicateSupport
	// RequestRateWindow declares that the store limits
	// requests_per_minute by one-minute windows, fixed or sliding (at most
	// RequestsPerMinute acquisitions per window, RetryAfter up to the
	// window's end) instead of the refilling token bucket of
	// [pharox.Quota.TakeToken]: a store without an atomic read-modify-write
	// (FerretDB) may only manage that; the MongoDB store uses a sliding
	// window. The suite then skips the refill test and allows a RetryAfter
	// up to a minute. False (the default) declares the bucket.
	RequestRateWindow bool
}

// LateRelease is a store's answer to releasing a lease past its ExpiresAt
// that nothing has reclaimed yet. Either way exactly one slot is freed,
// once.
type LateRelease int

const (
	// LateReleaseUndeclared is the zero value: the store did not say.
	LateReleaseUndeclared LateRelease = iota
	// LateReleaseReleases ends the lease as released and returns it.
	LateReleaseReleases
	// LateReleaseExpires reclaims the lease as expired and answers
	// ErrLeaseNotActive.
	LateReleaseExpires
)

func (r LateRelease) String() string {
	switch r {
	case LateReleaseReleases:
		return "released"
	case LateReleaseExpires:
		return "reclaimed as expired (ErrLeaseNotActive)"
	}
	return "undeclared"
}

// PredicateSupport says whether a store runs Go predicates in filters.
type PredicateSupport int

const (
	// PredicatesUndeclared is the zero value: the store did not say.
	PredicatesUndeclared PredicateSupport = iota
	// PredicatesRun: the store evaluates Filters.Predicate, at any depth.
	PredicatesRun
	// PredicatesRefused: the store answers ErrUnsupported to filters that
	// hold a predicate at any depth, and takes no slot.
	PredicatesRefused
)

// WithCapabilities declares the store's behaviours where the contract
// lets drivers differ (see [Capabilities]).
func WithCapabilities(c Capabilities) Option {
	return func(cfg *config) { cfg.caps = c }
}

// needLateRelease fails t unless the store declared its late-release
// behaviour.
func (c config) needLateRelease(t *testing.T) LateRelease {
	t.Helper()
	if c.caps.LateRelease == LateReleaseUndeclared {
		t.Fatal("the store does not declare what ReleaseLease does after expiry: pass storagetest.WithCapabilities(storagetest.Capabilities{LateRelease: ...}) to Run")
	}
	return c.caps.LateRelease
}

// needPredicates fails t unless the store declared whether it runs
// predicates.
func (c config) needPredicates(t *testing.T) PredicateSupport {
	t.Helper()
	if c.caps.Predicates == PredicatesUndeclared {
		t.Fatal("the store does not declare whether it runs filter predicates: pass storagetest.WithCapabilities(storagetest.Capabilities{Predicates: ...}) to Run")
	}
	return c.caps.Predicates
}
