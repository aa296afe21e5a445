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
	"github.com/pharox/pharox/internal/batch"
	goredis "github.com/redis/go-redis/v9"
)

// DefaultPrefix is the key prefix of a store built without [WithPrefix]. Its
// braces make it a Redis Cluster hash tag, so all keys share one slot.
const DefaultPrefix = "{pharox}:"

// DefaultEndedLeaseRetention is how long released and expired leases stay
// readable (GetLease, ListLeases) before CleanupExpiredLeases forgets them.
const DefaultEndedLeaseRetention = 24 * time.Hour

// DefaultUsageRetention is how long a store built without
// [WithUsageRetention] keeps an hour's usage bucket: each expires this
// long after its hour began, so Redis' memory for usage stays bounded even
// when nothing calls PurgeUsage. It is longer than pharox serve's default
// --usage-retention (90 days), which purges earlier.
const DefaultUsageRetention = 400 * 24 * time.Hour

// cleanupBatch bounds the work of one cleanup or purge script, so that
// maintenance never blocks acquisitions for long.
const cleanupBatch = 1000

// DefaultMaxBatch is how many acquisitions or releases one script carries
// at most in a store built without [WithMaxBatch].
const DefaultMaxBatch = 64

// maxInFlight is how many batches of one kind (acquisitions of one pool,
// strategy and filter; releases) run at once. 1 was measured best
// (BenchmarkAcquireRelease's workload at 8, 32 and 64 workers, alternating
// 1, 2 and 4 in one run, three runs on a 2-core machine): Redis runs one
// script at a time, so a second batch in flight cannot run sooner, and
// acquisitions and releases already overlap (one batch of each); more
// batches in flight only make each smaller, spending more script calls on
// the same work. 2 was 15-30% slower at 8 workers and level at 32 and 64;
// 4 was 5-25% slower throughout.
const maxInFlight = 1

// discardTimeout bounds the release of a lease acquired for a caller that
// stopped waiting; should it fail, the lease expires on its own.
const discardTimeout = 5 * time.Second

// Option configures a Store. An option whose argument is out of range
// makes New fail with an error wrapping [pharox.ErrInvalidArgument]; nil
// options are ignored.
type Option func(*config) error

// config is what the options set; New builds the Store from it.
type config struct {
	prefix         string
	retention      time.Duration
	usageRetention time.Duration
	maxBatch       int
}

// WithPrefix sets the prefix of every key the store uses, so several
// deployments (or tests) can share one Redis; an empty prefix is refused.
// Include a hash tag such as "{name}:" to keep the store usable on Redis
// Cluster.
func WithPrefix(p string) Option {
	return func(c *config) error {
		if p == "" {
			return fmt.Errorf("%w: redis: WithPrefix: prefix is empty", pharox.ErrInvalidArgument)
		}
		c.prefix = p
		return nil
	}
}

// WithEndedLeaseRetention sets how long ended leases are kept before
// CleanupExpiredLeases deletes them; zero keeps them until
// PurgeEndedLeases, and a negative duration is refused. Each ended lease
// takes about 0.5 KB of Redis memory while it is kept (see the package
// doc, Expiry and retention).
func WithEndedLeaseRetention(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("%w: redis: WithEndedLeaseRetention: retention must not be negative, got %v", pharox.ErrInvalidArgument, d)
		}
		c.retention = d
		return nil
	}
}

// WithUsageRetention sets how long each hourly usage bucket lives after
// its hour began before Redis expires it (see the package doc, Usage and
// quotas); zero keeps buckets until PurgeUsage deletes them, and a
// negative duration is refused. A quota set later counts only the buckets
// still kept, so keep at least the current month (32 days).
func WithUsageRetention(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("%w: redis: WithUsageRetention: retention must not be negative, got %v", pharox.ErrInvalidArgument, d)
		}
		c.usageRetention = d
		return nil
	}
}

// WithMaxBatch caps how many concurrent acquisitions (or releases) one
// script serves, and so how long one batch keeps Redis busy (some tens of
// microseconds per item); n = 1 turns batching off, so every call runs its
// own script. n outside 1-1000 is refused. The default is
// [DefaultMaxBatch]; see the package doc, Batching.
func WithMaxBatch(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 1000 {
			return fmt.Errorf("%w: redis: WithMaxBatch: batch size must be in 1-1000, got %d", pharox.ErrInvalidArgument, n)
		}
		c.maxBatch = n
		return nil
	}
}

// Store is a [pharox.Storage] on Redis. It is safe for concurrent use; its
// state lives entirely in Redis.
type Store struct {
	rdb       goredis.UniversalClient
	prefix    string
	retention time.Duration
	// usageRetention is the usage buckets' lifetime (WithUsageRetention).
	usageRetention time.Duration
	// anchor is the one key every script declares (see doc.go, Cluster).
	anchor   []string
	maxBatch int

	// acquires and releases coalesce concurrent calls into one script
	// each; nil when batching is off (WithMaxBatch(1)).
	acquires *batch.Coalescer[acquireKey, pharox.AcquireRequest, *pharox.Lease]
	releases *batch.Coalescer[struct{}, releaseReq, *pharox.Lease]
	// batchHook, when set (by tests only), is called as each batch starts,
	// with "acquire" or "release" and its size, so tests can hold batches
	// and see their sizes.
	batchHook func(kind string, n int)

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
	cfg := config{prefix: DefaultPrefix, retention: DefaultEndedLeaseRetention, usageRetention: DefaultUsageRetention, maxBatch: DefaultMaxBatch}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	s := &Store{rdb: client, prefix: cfg.prefix, retention: cfg.retention, maxBatch: cfg.maxBatch,
		usageRetention: cfg.usageRetention}
	s.anchor = []string{s.prefix + "pools"}
	if s.maxBatch > 1 {
		s.acquires = batch.New(s.execAcquire, batch.Options[*pharox.Lease]{
			MaxBatch: s.maxBatch, MaxInFlight: maxInFlight, Discard: s.discardLease,
		})
		s.releases = batch.New(s.execRelease, batch.Options[*pharox.Lease]{
			MaxBatch: s.maxBatch, MaxInFlight: maxInFlight,
		})
	}
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
	scriptAcquire     = lua("lib", "quota", "select", "acquire")
	scriptAcquireMany = lua("lib", "quota", "select", "acquire_many")
	scriptRelease     = lua("lib", "quota", "release")
	scriptReleaseMany = lua("lib", "quota", "release_many")
	scriptRenew       = lua("lib", "renew")
	scriptGetLease    = lua("lib", "get_lease")
	scriptCleanup     = lua("lib", "cleanup")
	scriptPurge       = lua("lib", "purge")
	scriptConsumer    = lua("lib", "consumer")
	scriptCreatePool  = lua("lib", "create_pool")
	scriptDeletePool  = lua("lib", "targets", "proxies", "delete_pool")
	scriptAddProxies  = lua("lib", "targets", "proxies", "add_proxies")
	scriptDeleteProxy = lua("lib", "targets", "proxies", "delete_proxy")
	scriptSetStatus   = lua("lib", "set_status")
	scriptHealth      = lua("lib", "health")
	scriptGetProxy    = lua("lib", "get_proxy")
	scriptStats       = lua("lib", "stats")
	scriptReclaim     = lua("lib", "reclaim")
	scriptKeyCreate   = lua("lib", "key_create")
	scriptKeyGet      = lua("lib", "key_get")
	scriptKeyRevoke   = lua("lib", "key_revoke")
	scriptKeyRotate   = lua("lib", "key_rotate")
	scriptKeyTouch    = lua("lib", "key_touch")
	scriptAuditAppend = lua("lib", "audit_append")
	scriptAuditPurge  = lua("lib", "audit_purge")
	scriptVerdict     = lua("lib", "verdict")
	scriptTargetApply = lua("lib", "targets", "target_apply")
	scriptTargetPurge = lua("lib", "targets", "target_purge")
	scriptSetQuota    = lua("lib", "quota", "set_quota")
	scriptDeleteQuota = lua("lib", "quota", "delete_quota")
	scriptTrack       = lua("lib", "track")
	scriptPurgeUsage  = lua("lib", "quota", "purge_usage")

	allScripts = []*goredis.Script{
		scriptAcquire, scriptAcquireMany, scriptRelease, scriptReleaseMany, scriptRenew,
		scriptGetLease, scriptCleanup, scriptPurge, scriptConsumer, scriptCreatePool, scriptDeletePool,
		scriptAddProxies, scriptDeleteProxy, scriptSetStatus, scriptHealth,
		scriptGetProxy, scriptStats, scriptReclaim,
		scriptKeyCreate, scriptKeyGet, scriptKeyRevoke, scriptKeyRotate, scriptKeyTouch,
		scriptAuditAppend, scriptAuditPurge, scriptVerdict,
		scriptTargetApply, scriptTargetPurge,
		scriptSetQuota, scriptDeleteQuota, scriptTrack, scriptPurgeUsage,
	}
)

// run runs a script with the prefix as ARGV[1].
func (s *Store) run(ctx context.Context, sc *goredis.Script, args ...any) (any, error) {
	return sc.Run(ctx, s.rdb, s.anchor, append([]any{s.prefix}, args...)...).Result()
}

// scanBudget is SCAN in lib.lua: the candidates one acquisition reads at
// most (see doc.go, Acquisition cost).
const scanBudget = 1024

// errTooSelective is a selection that gave up after scanBudget candidates.
var errTooSelective = fmt.Errorf("%w: the filter is too selective to serve: none of the %d free proxies read matched, "+
	"and no indexed condition (source, country, city, ISP, ASN, protocol, tag, or one per AnyOf alternative) narrows it to %d or fewer",
	pharox.ErrNoProxyAvailable, scanBudget, scanBudget)

// scriptErrors maps the codes scripts return to the root package's sentinels.
var scriptErrors = []struct {
	code string
	err  error
}{
	{"PHAROX_TOO_SELECTIVE", errTooSelective},
	{"PHAROX_POOL_NOT_FOUND", pharox.ErrPoolNotFound},
	{"PHAROX_PROXY_NOT_FOUND", pharox.ErrProxyNotFound},
	{"PHAROX_CONSUMER_NOT_FOUND", pharox.ErrConsumerNotFound},
	{"PHAROX_LEASE_NOT_FOUND", pharox.ErrLeaseNotFound},
	{"PHAROX_LEASE_NOT_ACTIVE", pharox.ErrLeaseNotActive},
	{"PHAROX_ALREADY_EXISTS", pharox.ErrAlreadyExists},
	{"PHAROX_IN_USE", pharox.ErrInUse},
	{"PHAROX_KEY_NOT_FOUND", pharox.ErrKeyNotFound},
	{"PHAROX_KEY_REVOKED", pharox.ErrKeyRevoked},
	{"PHAROX_QUOTA_NOT_FOUND", pharox.ErrQuotaNotFound},
}

// codeError returns the sentinel of a script error code, or nil; a
// quota's refusal is a *pharox.QuotaError (see quotaError).
func codeError(code string) error {
	if qe := quotaError(code); qe != nil {
		return qe
	}
	for _, e := range scriptErrors {
		if strings.Contains(code, e.code) {
			return e.err
		}
	}
	return nil
}

// wrap turns a Redis or script error into "redis: <what>: <sentinel or cause>".
func wrap(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	var rerr goredis.Error
	if errors.As(err, &rerr) {
		if sentinel := codeError(rerr.Error()); sentinel != nil {
			return fmt.Errorf("redis: %s: %w", what, sentinel)
		}
	}
	return fmt.Errorf("redis: %s: %w", what, err)
}
