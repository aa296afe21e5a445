package mongo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"

	"github.com/pharox/pharox"
)

// DefaultCollectionPrefix starts the name of every collection of the store
// unless WithCollectionPrefix says otherwise.
const DefaultCollectionPrefix = "pharox_"

// DefaultFilterScanBudget is how many candidates, in strategy order, one
// filtered acquisition examines before it gives up saying the filter is
// too selective, unless WithFilterScanBudget says otherwise.
const DefaultFilterScanBudget = 5000

// Option configures a Store.
type Option func(*config) error

type config struct {
	prefix string
	budget int
}

var collectionPrefix = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,31}$`)

// WithCollectionPrefix names the store's collections prefix+name
// ("pharox_" by default), so several stores can share one database.
// Prefixes are lower-case letters, digits and underscores, at most 32
// bytes, not starting with a digit.
func WithCollectionPrefix(prefix string) Option {
	return func(c *config) error {
		if !collectionPrefix.MatchString(prefix) {
			return fmt.Errorf("%w: mongo: WithCollectionPrefix: prefix %q must be lower-case letters, digits and underscores, at most 32 bytes, not starting with a digit", pharox.ErrInvalidArgument, prefix)
		}
		c.prefix = prefix
		return nil
	}
}

// WithFilterScanBudget sets how many candidates, in strategy order, one
// filtered acquisition examines before it fails with ErrNoProxyAvailable
// saying the filter is too selective (default DefaultFilterScanBudget). It
// bounds the work of every call with a filter.
func WithFilterScanBudget(n int) Option {
	return func(c *config) error {
		if n < 10 || n > 1000000 {
			return fmt.Errorf("%w: mongo: WithFilterScanBudget: budget must be in 10-1000000, got %d", pharox.ErrInvalidArgument, n)
		}
		c.budget = n
		return nil
	}
}

func buildConfig(opts []Option) (config, error) {
	c := config{prefix: DefaultCollectionPrefix, budget: DefaultFilterScanBudget}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&c); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Store is the pharox.Storage on a MongoDB database. It is safe for
// concurrent use by any number of goroutines and processes.
type Store struct {
	client    *mongo.Client // nil when the caller owns it
	db        *mongo.Database
	cfg       config
	consumers *mongo.Collection
	pools     *mongo.Collection
	proxies   *mongo.Collection
	slots     *mongo.Collection // active leases, one per taken slot
	leases    *mongo.Collection // ended leases
	sessions  *mongo.Collection
	cursors   *mongo.Collection
	verdicts  *mongo.Collection // lease ids whose verdict was claimed
	apiKeys   *mongo.Collection // API keys (digests, never secrets)
	audit     *mongo.Collection // audit log entries
	targets   *mongo.Collection // per-(proxy, target) health
	quotas    *mongo.Collection // quotas, their byte shards and spent allowances
	caps      *mongo.Collection // cap slots of consumer and pool quotas
	tokens    *mongo.Collection // request logs of requests_per_minute limits
	usage     *mongo.Collection // hourly usage buckets, one per writer
	loads     *mongo.Collection // proxies' lease counts, for LeastUsed and Random

	known sync.Map // consumer id string -> struct{}: consumers are never deleted
	// capsFull: quota key -> time.Time this instance last found the cap
	// full (a hint that spares failing inserts; see takeCap).
	capsFull sync.Map

	// writer names this store instance's usage buckets and quota byte
	// shards: no other instance writes them, and counterLocks serialize
	// this instance's writes of one document, so their counters are
	// exact even on servers whose updates are not atomic.
	writer       string
	counterLocks [64]sync.Mutex
}

// Open connects to the MongoDB URI (mongodb:// or mongodb+srv://, naming
// the database in its path; "pharox" when it names none), creates the
// collections' indexes and returns a store that disconnects on Close.
func Open(ctx context.Context, uri string, opts ...Option) (*Store, error) {
	dbName, err := DatabaseFromURI(uri)
	if err != nil {
		return nil, err
	}
	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetTimeout(30 * time.Second))
	if err != nil {
		return nil, fmt.Errorf("mongo: connect: %w", err)
	}
	s, err := New(ctx, client.Database(dbName), opts...)
	if err != nil {
		_ = client.Disconnect(context.Background())
		return nil, err
	}
	s.client = client
	return s, nil
}

// New builds a store over a database of a caller's client and creates the
// indexes it needs (idempotent, safe from many processes at once). Close
// leaves the client connected.
func New(ctx context.Context, db *mongo.Database, opts ...Option) (*Store, error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	c := func(name string) *mongo.Collection { return db.Collection(cfg.prefix + name) }
	s := &Store{
		db: db, cfg: cfg,
		consumers: c("consumers"),
		pools:     c("pools"),
		proxies:   c("proxies"),
		slots:     c("slots"),
		leases:    c("leases"),
		sessions:  c("sessions"),
		cursors:   c("cursors"),
		verdicts:  c("verdicts"),
		apiKeys:   c("api_keys"),
		audit:     c("audit_log"),
		targets:   c("proxy_targets"),
		quotas:    c("quotas"),
		caps:      c("quota_slots"),
		tokens:    c("quota_tokens"),
		usage:     c("usage_hourly"),
		loads:     c("proxy_loads"),
		writer:    strings.ReplaceAll(uuid.NewString(), "-", ""),
	}
	if err := s.ensureIndexes(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// ensureIndexes creates every index the store's queries and invariants
// rely on. Creating an index that exists with the same keys and options
// is a no-op, so concurrent processes may all call it.
func (s *Store) ensureIndexes(ctx context.Context) error {
	unique := func(name string) *options.IndexOptionsBuilder {
		return options.Index().SetName(name).SetUnique(true)
	}
	named := func(name string) *options.IndexOptionsBuilder { return options.Index().SetName(name) }
	// withRoom indexes the loads of proxies with a free slot only, so a
	// busy pool's full proxies cost LeastUsed and Random nothing.
	withRoom := func(name string) *options.IndexOptionsBuilder {
		return named(name).SetPartialFilterExpression(bson.D{{Key: "room", Value: bson.D{{Key: "$gt", Value: 0}}}})
	}
	sets := []struct {
		coll   *mongo.Collection
		models []mongo.IndexModel
	}{
		{s.consumers, []mongo.IndexModel{{Keys: bson.D{{Key: "name", Value: 1}}, Options: unique("name")}}},
		{s.pools, []mongo.IndexModel{{Keys: bson.D{{Key: "name", Value: 1}}, Options: unique("name")}}},
		{s.proxies, []mongo.IndexModel{
			{Keys: bson.D{{Key: "pool", Value: 1}, {Key: "protocol", Value: 1}, {Key: "host", Value: 1}, {Key: "port", Value: 1}, {Key: "user", Value: 1}}, Options: unique("address")},
			{Keys: bson.D{{Key: "pool", Value: 1}, {Key: "rank", Value: 1}, {Key: "checked_at", Value: -1}, {Key: "_id", Value: 1}}, Options: named("first_available")},
			{Keys: bson.D{{Key: "pool", Value: 1}, {Key: "_id", Value: 1}}, Options: named("pool_id")},
		}},
		{s.slots, []mongo.IndexModel{
			{Keys: bson.D{{Key: "proxy", Value: 1}, {Key: "n", Value: 1}}, Options: unique("slot")},
			{Keys: bson.D{{Key: "pool", Value: 1}, {Key: "proxy", Value: 1}}, Options: named("pool_proxy")},
			{Keys: bson.D{{Key: "expires_at", Value: 1}}, Options: named("expires_at")},
			{Keys: bson.D{{Key: "consumer", Value: 1}}, Options: named("consumer")},
		}},
		{s.leases, []mongo.IndexModel{
			{Keys: bson.D{{Key: "pool", Value: 1}, {Key: "acquired_at", Value: 1}}, Options: named("pool_acquired")},
			{Keys: bson.D{{Key: "proxy", Value: 1}}, Options: named("proxy")},
			{Keys: bson.D{{Key: "released_at", Value: 1}}, Options: named("released_at")},
		}},
		{s.sessions, []mongo.IndexModel{{Keys: bson.D{{Key: "expires_at", Value: 1}}, Options: named("expires_at")}}},
		{s.verdicts, []mongo.IndexModel{{Keys: bson.D{{Key: "pool", Value: 1}}, Options: named("pool")}, {Keys: bson.D{{Key: "proxy", Value: 1}}, Options: named("proxy")}}},
		{s.apiKeys, []mongo.IndexModel{
			{Keys: bson.D{{Key: "name", Value: 1}}, Options: unique("name")},
			{Keys: bson.D{{Key: "digest", Value: 1}}, Options: unique("digest")},
		}},
		{s.audit, []mongo.IndexModel{{Keys: bson.D{{Key: "at", Value: -1}, {Key: "seq", Value: -1}}, Options: named("at")}}},
		{s.targets, []mongo.IndexModel{
			{Keys: bson.D{{Key: "proxy", Value: 1}, {Key: "target", Value: 1}}, Options: named("proxy_target")},
			{Keys: bson.D{{Key: "pool", Value: 1}, {Key: "target", Value: 1}, {Key: "cooling_until", Value: 1}}, Options: named("pool_target_cooling")},
			{Keys: bson.D{{Key: "idle_since", Value: 1}}, Options: named("idle_since")},
		}},
		{s.quotas, []mongo.IndexModel{
			{Keys: bson.D{{Key: "q", Value: 1}}, Options: named("q")},
			{Keys: bson.D{{Key: "pool", Value: 1}, {Key: "until", Value: 1}}, Options: named("pool_until")},
		}},
		{s.caps, []mongo.IndexModel{
			{Keys: bson.D{{Key: "q", Value: 1}, {Key: "gen", Value: 1}, {Key: "n", Value: 1}}, Options: unique("slot")},
		}},
		{s.tokens, []mongo.IndexModel{
			{Keys: bson.D{{Key: "q", Value: 1}, {Key: "gen", Value: 1}, {Key: "k", Value: 1}}, Options: named("q_gen_k")},
		}},
		{s.loads, []mongo.IndexModel{
			{Keys: bson.D{{Key: "pool", Value: 1}, {Key: "rank", Value: 1}, {Key: "n", Value: 1}, {Key: "_id", Value: 1}}, Options: withRoom("least_used")},
			{Keys: bson.D{{Key: "pool", Value: 1}, {Key: "rank", Value: 1}, {Key: "_id", Value: 1}}, Options: withRoom("random")},
			{Keys: bson.D{{Key: "pool", Value: 1}}, Options: named("pool")},
		}},
		{s.usage, []mongo.IndexModel{
			{Keys: bson.D{{Key: "hour", Value: 1}}, Options: named("hour")},
			{Keys: bson.D{{Key: "consumer", Value: 1}, {Key: "hour", Value: 1}}, Options: named("consumer_hour")},
			{Keys: bson.D{{Key: "pool", Value: 1}, {Key: "hour", Value: 1}}, Options: named("pool_hour")},
			{Keys: bson.D{{Key: "proxy", Value: 1}, {Key: "hour", Value: 1}}, Options: named("proxy_hour")},
		}},
	}
	for _, set := range sets {
		var err error
		for attempt := range 4 {
			if err = createMissing(ctx, set.coll, set.models); err == nil {
				break
			}
			// Servers may fail a createIndexes that races another
			// process's (FerretDB v1 drops the connection): look again.
			t := time.NewTimer(time.Duration(50<<attempt) * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("mongo: create indexes of %s: %w", set.coll.Name(), ctx.Err())
			case <-t.C:
			}
		}
		if err != nil {
			return fmt.Errorf("mongo: create indexes of %s: %w", set.coll.Name(), wrapErr(err))
		}
	}
	return nil
}

// createMissing creates the indexes of models whose names c lacks, so
// processes that open a store already set up send no createIndexes.
func createMissing(ctx context.Context, c *mongo.Collection, models []mongo.IndexModel) error {
	specs, err := c.Indexes().ListSpecifications(ctx)
	if err != nil {
		return err
	}
	have := make(map[string]bool, len(specs))
	for _, sp := range specs {
		have[sp.Name] = true
	}
	var missing []mongo.IndexModel
	partial := false
	for _, m := range models {
		var o options.IndexOptions
		for _, set := range m.Options.List() {
			_ = set(&o)
		}
		if o.Name == nil || !have[*o.Name] {
			missing = append(missing, m)
			partial = partial || o.PartialFilterExpression != nil
		}
	}
	if len(missing) == 0 {
		return nil
	}
	_, err = c.Indexes().CreateMany(ctx, missing)
	var ce mongo.CommandError
	if partial && errors.As(err, &ce) && ce.Code == notImplemented {
		// FerretDB v1 builds no partial index (and evaluates queries
		// without indexes anyway): the same keys, on every document.
		for i, m := range missing {
			var o options.IndexOptions
			for _, set := range m.Options.List() {
				_ = set(&o)
			}
			missing[i].Options = options.Index().SetName(*o.Name).SetUnique(o.Unique != nil && *o.Unique)
		}
		_, err = c.Indexes().CreateMany(ctx, missing)
	}
	return err
}

// notImplemented is the server error code of an option it does not
// implement (FerretDB: partial indexes).
const notImplemented = 238

// Ping reports whether the server answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Err(); err != nil {
		return fmt.Errorf("mongo: ping: %w", wrapErr(err))
	}
	return nil
}

// Close disconnects the client Open made; a store from New leaves its
// client connected.
func (s *Store) Close() error {
	if s.client == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.client.Disconnect(ctx)
}

// Database returns the database the store keeps its collections in.
func (s *Store) Database() *mongo.Database { return s.db }

// now is the store's clock: the process's UTC clock at the millisecond,
// the precision of a BSON date.
func now() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

// outageError marks errors of a connection lost or a server unreachable,
// so callers that classify outages with the standard library (the
// server's 503 answers) recognise them without importing the driver.
type outageError struct{ err error }

func (e *outageError) Error() string { return e.err.Error() }
func (e *outageError) Unwrap() []error {
	return []error{e.err, pharox.ErrUnavailable, io.ErrUnexpectedEOF}
}

// wrapErr classifies a driver error: network and server-selection
// failures also match pharox.ErrUnavailable and io.ErrUnexpectedEOF.
func wrapErr(err error) error {
	if err == nil {
		return nil
	}
	var ne net.Error
	if mongo.IsNetworkError(err) || mongo.IsTimeout(err) || errors.As(err, &ne) ||
		errors.As(err, new(topology.ServerSelectionError)) || errors.Is(err, mongo.ErrClientDisconnected) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return &outageError{err}
	}
	return err
}

// idString renders a uuid as the store's _id: its canonical string, whose
// order is the order of the uuid's bytes.
func idString(id uuid.UUID) string { return id.String() }

func parseID(s string) uuid.UUID {
	id, _ := uuid.Parse(s)
	return id
}
