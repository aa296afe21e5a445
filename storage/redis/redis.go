package redis

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

// DefaultPrefix is the key prefix of a store built without [WithPrefix]. Its
// braces make it a Redis Cluster hash tag, so all keys share one slot.
const DefaultPrefix = "{pharox}:"

// DefaultEndedLeaseRetention is how long released and expired leases stay
// readable (GetLease, ListLeases) before CleanupExpiredLeases forgets them.
const DefaultEndedLeaseRetention = 24 * time.Hour

// cleanupBatch bounds the work of one cleanup or purge script, so that
// maintenance never blocks acquisitions for long.
const cleanupBatch = 1000

// Option configures a Store.
type Option func(*Store)

// WithPrefix sets the prefix of every key the store uses, so several
// deployments (or tests) can share one Redis. Include a hash tag such as
// "{name}:" to keep the store usable on Redis Cluster.
func WithPrefix(p string) Option { return func(s *Store) { s.prefix = p } }

// WithEndedLeaseRetention sets how long ended leases are kept before
// CleanupExpiredLeases deletes them; zero or negative keeps them until
// PurgeEndedLeases.
func WithEndedLeaseRetention(d time.Duration) Option {
	return func(s *Store) { s.retention = d }
}

// Store is a [pharox.Storage] on Redis. It is safe for concurrent use; its
// state lives entirely in Redis.
type Store struct {
	rdb       goredis.UniversalClient
	prefix    string
	retention time.Duration
	// anchor is the one key every script declares (see doc.go, Cluster).
	anchor []string

	// consumers holds ids of consumers known to exist; consumers are never
	// deleted, so acquisitions for them skip the existence check.
	consumers sync.Map
	// poolIDs maps pool names to the id last seen, a hint acquire.lua
	// checks before trusting a miss.
	poolIDs sync.Map
	// statics caches decoded static proxy parts (see staticProxyOf).
	statics     sync.Map
	staticCount atomic.Int64
}

var _ pharox.Storage = (*Store)(nil)

// New returns a store on client without contacting Redis: scripts load on
// first use (or with [Store.LoadScripts]); [Store.Ping] checks the server.
// The store never closes the client.
func New(client goredis.UniversalClient, opts ...Option) (*Store, error) {
	if client == nil {
		return nil, fmt.Errorf("redis: new store: %w: nil client", pharox.ErrInvalidArgument)
	}
	s := &Store{rdb: client, prefix: DefaultPrefix, retention: DefaultEndedLeaseRetention}
	for _, o := range opts {
		o(s)
	}
	if s.prefix == "" {
		return nil, fmt.Errorf("redis: new store: %w: empty key prefix", pharox.ErrInvalidArgument)
	}
	s.anchor = []string{s.prefix + "pools"}
	return s, nil
}

// Prefix returns the store's key prefix.
func (s *Store) Prefix() string { return s.prefix }

// LoadScripts loads every script into the server's script cache, so the
// first calls need no EVAL fallback. Calling it is optional.
func (s *Store) LoadScripts(ctx context.Context) error {
	for _, sc := range allScripts {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("redis: load scripts: %w", err)
		}
	}
	return nil
}

// Ping reports whether Redis is reachable.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: ping: %w", err)
	}
	return nil
}

// Close does nothing: the client belongs to the caller.
func (s *Store) Close() error { return nil }

//go:embed lua/*.lua
var luaFS embed.FS

func lua(names ...string) *goredis.Script {
	var b strings.Builder
	for _, n := range names {
		src, err := luaFS.ReadFile("lua/" + n + ".lua")
		if err != nil {
			panic("redis: missing embedded script " + n) // a build defect, caught by every test
		}
		b.Write(src)
		b.WriteByte('\n')
	}
	return goredis.NewScript(b.String())
}

var (
	scriptAcquire     = lua("lib", "select", "acquire")
	scriptRelease     = lua("lib", "release")
	scriptRenew       = lua("lib", "renew")
	scriptGetLease    = lua("lib", "get_lease")
	scriptCleanup     = lua("lib", "cleanup")
	scriptPurge       = lua("lib", "purge")
	scriptConsumer    = lua("lib", "consumer")
	scriptCreatePool  = lua("lib", "create_pool")
	scriptDeletePool  = lua("lib", "proxies", "delete_pool")
	scriptAddProxies  = lua("lib", "proxies", "add_proxies")
	scriptDeleteProxy = lua("lib", "proxies", "delete_proxy")
	scriptSetStatus   = lua("lib", "set_status")
	scriptHealth      = lua("lib", "health")
	scriptGetProxy    = lua("lib", "get_proxy")
	scriptListProxies = lua("lib", "list_proxies")
	scriptStats       = lua("lib", "stats")
	scriptReclaim     = lua("lib", "reclaim")

	allScripts = []*goredis.Script{
		scriptAcquire, scriptRelease, scriptRenew, scriptGetLease, scriptCleanup,
		scriptPurge, scriptConsumer, scriptCreatePool, scriptDeletePool,
		scriptAddProxies, scriptDeleteProxy, scriptSetStatus, scriptHealth,
		scriptGetProxy, scriptListProxies, scriptStats, scriptReclaim,
	}
)

// run runs a script with the prefix as ARGV[1].
func (s *Store) run(ctx context.Context, sc *goredis.Script, args ...any) (any, error) {
	return sc.Run(ctx, s.rdb, s.anchor, append([]any{s.prefix}, args...)...).Result()
}

// scriptErrors maps the codes scripts return to the root package's sentinels.
var scriptErrors = []struct {
	code string
	err  error
}{
	{"PHAROX_POOL_NOT_FOUND", pharox.ErrPoolNotFound},
	{"PHAROX_PROXY_NOT_FOUND", pharox.ErrProxyNotFound},
	{"PHAROX_CONSUMER_NOT_FOUND", pharox.ErrConsumerNotFound},
	{"PHAROX_LEASE_NOT_FOUND", pharox.ErrLeaseNotFound},
	{"PHAROX_LEASE_NOT_ACTIVE", pharox.ErrLeaseNotActive},
	{"PHAROX_ALREADY_EXISTS", pharox.ErrAlreadyExists},
	{"PHAROX_IN_USE", pharox.ErrInUse},
}

// wrap turns a Redis or script error into "redis: <what>: <sentinel or cause>".
func wrap(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	var rerr goredis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		for _, e := range scriptErrors {
			if strings.Contains(msg, e.code) {
				return fmt.Errorf("redis: %s: %w", what, e.err)
			}
		}
	}
	return fmt.Errorf("redis: %s: %w", what, err)
}
