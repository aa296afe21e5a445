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
