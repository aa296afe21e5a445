package postgres

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/batch"
	"github.com/pharox/pharox/internal/migrate"
)

// DefaultSchema is the schema the store uses unless WithSchema says
// otherwise.
const DefaultSchema = "pharox"

// Option configures a Store (and Migrate, which only reads WithSchema).
// An option whose argument is out of range makes New and Migrate fail
// with an error wrapping [pharox.ErrInvalidArgument].
type Option func(*config) error

type config struct {
	schema         string
	maxAttempts    int
	durableRelease bool
	maxBatch       int
	scanBudget     int
}

// schemaName restricts schema names to plain lower-case identifiers: they
// are quoted anyway, but a name that needs no quoting cannot surprise
// anyone reading the database.
var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// WithSchema places every table of the store in the named schema, which
// Migrate creates. Names are lower-case letters, digits and underscores,
// at most 63 bytes, not starting with a digit. Several stores with
// different schemas may share one database and one connection pool.
func WithSchema(name string) Option {
	return func(c *config) error {
		if !schemaName.MatchString(name) {
			return fmt.Errorf("%w: postgres: WithSchema: name must match %s, got %q", pharox.ErrInvalidArgument, schemaName, name)
		}
		c.schema = name
		return nil
	}
}

// WithAcquireAttempts sets how many times AcquireLease tries again when
// every free candidate was row-locked by a concurrent transaction (default
// 12, with a backoff from 100µs to 5ms between tries). Before the last try
// it waits, up to 2s, for the transaction holding its best candidate;
// with 1 it never waits. n outside 1-1000 is refused. See the package
// documentation for why a try can miss.
func WithAcquireAttempts(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 1000 {
			return fmt.Errorf("%w: postgres: WithAcquireAttempts: attempts must be in 1-1000, got %d", pharox.ErrInvalidArgument, n)
		}
		c.maxAttempts = n
		return nil
	}
}

// WithDurableReleases makes ReleaseLease wait for its WAL flush like every
// other write. By default it does not (see ReleaseLease): a release lost in
// a database crash only keeps a slot taken until its lease expires, and
// skipping the flush wait roughly halves the commit latency of an
// acquire+release pair.
func WithDurableReleases() Option {
	return func(c *config) error {
		c.durableRelease = true
		return nil
	}
}

// WithMaxBatch sets how many concurrent calls of one Store may share one
// statement (default DefaultMaxBatch): acquisitions from one pool with the
// same strategy and filters, or releases. 1 turns batching off, so every
// call runs its own statement; n outside 1-1000 is refused. See the
// package documentation, Batching.
func WithMaxBatch(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 1000 {
			return fmt.Errorf("%w: postgres: WithMaxBatch: batch size must be in 1-1000, got %d", pharox.ErrInvalidArgument, n)
		}
		c.maxBatch = n
		return nil
	}
}

// WithFilterScanBudget sets how many free proxies, in strategy order, one
// acquisition (or FindAvailableProxy) examines for a filter before it
// gives up with ErrNoProxyAvailable saying the filter is too selective
// (default DefaultFilterScanBudget; n outside 10-1000000 is refused). It
// bounds the work of every call; busy proxies never count against it. See
// the package documentation, Filters.
func WithFilterScanBudget(n int) Option {
	return func(c *config) error {
		if n < 10 || n > 1_000_000 {
			return fmt.Errorf("%w: postgres: WithFilterScanBudget: budget must be in 10-1000000, got %d", pharox.ErrInvalidArgument, n)
		}
		c.scanBudget = n
		return nil
	}
}

// releaseCommit is the synchronous_commit value releases commit with.
func (s *Store) releaseCommit() string {
	if s.cfg.durableRelease {
		return "on"
	}
	return "off"
}

func buildConfig(opts []Option) (config, error) {
	c := config{schema: DefaultSchema, maxAttempts: 12, maxBatch: DefaultMaxBatch, scanBudget: DefaultFilterScanBudget}
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

// Store is a pharox.Storage on PostgreSQL. It is safe for concurrent use by
// any number of goroutines, and any number of Stores in any number of
// processes may share one database schema.
type Store struct {
	pool   *pgxpool.Pool
	cfg    config
	schema string // quoted identifier

	// naive switches the acquisition to plain FOR UPDATE: benchmarks use it
	// as the baseline that SKIP LOCKED is measured against.
	naive bool

	// acquireSQL caches the generated statements that have no filter.
	acquireSQL sync.Map // acquireKey -> string
	// batchSQL caches the generated batch statements that have no filter.
	batchSQL sync.Map // acquireBatchKey -> string

	// acquirer and releaser coalesce concurrent calls (see batch.go).
	acquirer *batch.Coalescer[acquireBatchKey, *acquireItem, *pharox.Lease]
	releaser *batch.Coalescer[bool, releaseItem, *pharox.Lease]

	// hints sends the acquisitions of consumers and pools with quotas
	// straight to the quota statements.
	hints quotaHints
}

var _ pharox.Storage = (*Store)(nil)

// New returns a Store over pool. The schema must have been migrated (see
// Migrate) to exactly the version this package needs; New checks that and
// fails with a clear message otherwise, including when a newer pharox has
// migrated it further (ErrSchemaTooNew). The Store does not own pool: Close leaves
// it open.
func New(ctx context.Context, pool *pgxpool.Pool, opts ...Option) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: postgres: pool is nil", pharox.ErrInvalidArgument)
	}
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	have, err := schemaVersion(ctx, pool, cfg.schema)
	if err != nil {
		return nil, fmt.Errorf("postgres: read schema version of %s: %w", cfg.schema, err)
	}
	if err := migrate.Check(migrations, have, "schema "+cfg.schema, "call postgres.Migrate (or run pharox migrate) first"); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s := &Store{pool: pool, cfg: cfg, schema: quoteIdent(cfg.schema)}
	s.newBatchers()
	return s, nil
}

// Schema returns the schema the store's tables live in.
func (s *Store) Schema() string { return s.cfg.schema }

// Ping reports whether the database is reachable.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}

// Close does nothing: the store holds no resources of its own, and the
// connection pool belongs to the caller, who closes it.
func (s *Store) Close() error { return nil }

// q qualifies the table names in a statement: {s}.name becomes
// "schema".name. Statements are built from constants only; values always
// travel as bind parameters.
func (s *Store) q(sql string) string { return strings.ReplaceAll(sql, "{s}.", s.schema+".") }

func quoteIdent(name string) string { return pgx.Identifier{name}.Sanitize() }

// ErrSchemaTooNew means the schema was migrated by a newer pharox than
// this one: New and Migrate refuse it rather than run statements written
// for an older layout.
// It is the same value in every SQL store.
var ErrSchemaTooNew = migrate.ErrSchemaTooNew

// PostgreSQL error codes the store maps to pharox errors.
const (
	codeUniqueViolation     = "23505"
	codeForeignKeyViolation = "23503"
	codeCheckViolation      = "23514"
)

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// utc converts a database time to UTC with microsecond precision, the
// precision PostgreSQL stores.
func utc(t time.Time) time.Time { return t.UTC() }

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// micro truncates a caller's time to what PostgreSQL can store, so values
// read back compare equal to what was written.
func micro(t time.Time) time.Time { return t.Truncate(time.Microsecond).UTC() }

// nullUUID turns the zero UUID into SQL NULL.
func nullUUID(id uuid.UUID) any {
	if id == uuid.Nil {
		return nil
	}
	return id
}
