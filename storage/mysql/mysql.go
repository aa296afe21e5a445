package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/migrate"
)

// DefaultTablePrefix starts the name of every table of the store unless
// WithTablePrefix says otherwise.
const DefaultTablePrefix = "pharox_"

// Option configures a Store (and Migrate, which only reads
// WithTablePrefix). An option whose argument is out of range makes Open,
// New and Migrate fail with an error wrapping [pharox.ErrInvalidArgument].
type Option func(*config) error

type config struct {
	prefix      string
	maxAttempts int
	maxConns    int
}

// tablePrefix restricts prefixes to plain lower-case identifiers, so table
// names need no quoting.
var tablePrefix = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,31}$`)

// WithTablePrefix names the store's tables prefix+name ("pharox_" by
// default), so several stores can share one database. Prefixes are
// lower-case letters, digits and underscores, at most 32 bytes, not
// starting with a digit.
func WithTablePrefix(prefix string) Option {
	return func(c *config) error {
		if !tablePrefix.MatchString(prefix) {
			return fmt.Errorf("%w: mysql: WithTablePrefix: prefix must match %s, got %q", pharox.ErrInvalidArgument, tablePrefix, prefix)
		}
		c.prefix = prefix
		return nil
	}
}

// WithAcquireAttempts sets how many times AcquireLease tries again when
// every free candidate was row-locked by a concurrent transaction (default
// 12, with a backoff from 100µs to 5ms between tries); n outside 1-1000 is
// refused.
func WithAcquireAttempts(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 1000 {
			return fmt.Errorf("%w: mysql: WithAcquireAttempts: attempts must be in 1-1000, got %d", pharox.ErrInvalidArgument, n)
		}
		c.maxAttempts = n
		return nil
	}
}

// WithMaxConns caps the connections Open makes (default 16; n outside
// 1-10000 is refused). New leaves the caller's pool as it is.
func WithMaxConns(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 10000 {
			return fmt.Errorf("%w: mysql: WithMaxConns: connections must be in 1-10000, got %d", pharox.ErrInvalidArgument, n)
		}
		c.maxConns = n
		return nil
	}
}

func buildConfig(opts []Option) (config, error) {
	c := config{prefix: DefaultTablePrefix, maxAttempts: 12, maxConns: 16}
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

// Store is a pharox.Storage on MySQL 8 or MariaDB 10.6 and later. It is
// safe for concurrent use, and any number of Stores in any number of
// processes may share one set of tables.
type Store struct {
	db  *sql.DB
	cfg config
	// owned marks a pool Open made, which Close closes.
	owned bool
	// txOpts is what every transaction begins with: nil when the session
	// already runs READ COMMITTED (Open sets it), otherwise the isolation
	// level per transaction, which costs a statement.
	txOpts *sql.TxOptions

	// pools caches pool ids by name and consumers the ids of consumers
	// known to exist (consumers are never deleted); see acquireTx.
	pools     sync.Map // string -> uuid.UUID
	consumers sync.Map // uuid.UUID -> struct{}
	// quotaPairs holds the (consumer, pool) pairs whose last acquisition
	// found a quota of either: the next one locks the quotas first
	// rather than learn of them from its probe (see acquireTx).
	quotaPairs sync.Map // quotaPair -> struct{}

	// multi marks a pool Open made with multiStatements: transactions
	// then run as connTx.
	multi bool

	// naive switches acquisition to a plain FOR UPDATE that waits for
	// locked rows: benchmarks measure SKIP LOCKED against it.
	naive bool
}

var _ pharox.Storage = (*Store)(nil)

// Open connects with a go-sql-driver/mysql DSN such as
// "user:pass@tcp(127.0.0.1:3306)/app", migrates the tables and returns a
// store that owns the connection pool: Close closes it. Open sets the
// options the store relies on (parseTime, loc and time_zone UTC, READ
// COMMITTED, interpolateParams, multiStatements), whatever the DSN says
// about them; the store never writes a value into SQL text itself.
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	mc, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: mysql: DSN: %v", pharox.ErrInvalidArgument, err)
	}
	if mc.DBName == "" {
		return nil, fmt.Errorf("%w: mysql: the DSN names no database (add /dbname)", pharox.ErrInvalidArgument)
	}
	mc.ParseTime = true
	mc.Loc = time.UTC
	mc.InterpolateParams = true
	mc.MultiStatements = true
	if mc.Params == nil {
		mc.Params = map[string]string{}
	}
	mc.Params["time_zone"] = "'+00:00'"
	// MySQL 8 and MariaDB 11.1+ call the variable transaction_isolation;
	// older MariaDB only knows tx_isolation.
	var db *sql.DB
	for _, v := range []string{"transaction_isolation", "tx_isolation"} {
		delete(mc.Params, "transaction_isolation")
		delete(mc.Params, "tx_isolation")
		mc.Params[v] = "'READ-COMMITTED'"
		conn, err := mysql.NewConnector(mc)
		if err != nil {
			return nil, fmt.Errorf("%w: mysql: DSN: %v", pharox.ErrInvalidArgument, err)
		}
		db = sql.OpenDB(conn)
		err = db.PingContext(ctx)
		if err == nil {
			break
		}
		db.Close()
		db = nil
		var me *mysql.MySQLError
		if code(err) != errUnknownSystemVariable || !errors.As(err, &me) || !strings.Contains(me.Message, v) {
			return nil, fail("mysql: connect: %w", err)
		}
	}
	if db == nil {
		return nil, errors.New("mysql: connect: the server knows neither transaction_isolation nor tx_isolation")
	}
	db.SetMaxOpenConns(cfg.maxConns)
	db.SetMaxIdleConns(cfg.maxConns)
	db.SetConnMaxLifetime(30 * time.Minute)
	if err := Migrate(ctx, db, opts...); err != nil {
		db.Close()
		return nil, err
	}
	s, err := newStore(ctx, db, cfg, nil)
	if err != nil {
		db.Close()
		return nil, err
	}
	s.owned, s.multi = true, true
	return s, nil
}

// New returns a Store over a pool the caller opened, which must have been
// migrated (see Migrate). The pool's DSN must set parseTime=true and
// loc=UTC (the default loc); New checks both. Transactions then set READ
// COMMITTED themselves, one statement more than a store from Open, and
// send one statement per round trip (interpolateParams=true in the DSN
// saves the driver's prepare round trips). Close leaves the pool open.
func New(ctx context.Context, db *sql.DB, opts ...Option) (*Store, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: mysql: db is nil", pharox.ErrInvalidArgument)
	}
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	return newStore(ctx, db, cfg, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
}

func newStore(ctx context.Context, db *sql.DB, cfg config, txOpts *sql.TxOptions) (*Store, error) {
	var probe any
	if err := db.QueryRowContext(ctx, `SELECT CAST('2000-01-02 03:04:05.000006' AS DATETIME(6))`).Scan(&probe); err != nil {
		return nil, fail("mysql: connect: %w", err)
	}
	want := time.Date(2000, 1, 2, 3, 4, 5, 6000, time.UTC)
	if t, ok := probe.(time.Time); !ok || !t.Equal(want) {
		return nil, fmt.Errorf("%w: mysql: the connection pool must be opened with parseTime=true and loc=UTC", pharox.ErrInvalidArgument)
	}
	s := &Store{db: db, cfg: cfg, txOpts: txOpts}
	have, err := schemaVersion(ctx, db, cfg.prefix)
	if err != nil {
		return nil, fail("mysql: read schema version of tables %s*: %w", cfg.prefix, err)
	}
	if err := migrate.Check(migrations, have, "tables "+cfg.prefix+"*", "call mysql.Migrate (or run pharox migrate) first"); err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	return s, nil
}

// TablePrefix returns the prefix of the store's table names.
func (s *Store) TablePrefix() string { return s.cfg.prefix }

// DB returns the store's connection pool.
func (s *Store) DB() *sql.DB { return s.db }

// Ping reports whether the database is reachable.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fail("mysql: ping: %w", err)
	}
	return nil
}

// Close closes the connection pool if Open made it; a pool given to New
// stays open.
func (s *Store) Close() error {
	if s.owned {
		if err := s.db.Close(); err != nil {
			return fmt.Errorf("mysql: close: %w", err)
		}
	}
	return nil
}

// q puts the table prefix into a statement: {p}name becomes prefix+name.
// Statements are built from constants only; values always travel as
// parameters.
func (s *Store) q(query string) string { return strings.ReplaceAll(query, "{p}", s.cfg.prefix) }

// MySQL and MariaDB error numbers the store maps.
const (
	errDupEntry              = 1062
	errDupFieldName          = 1060 // ER_DUP_FIELDNAME: ADD COLUMN of a column that exists
	errDupKeyName            = 1061 // ER_DUP_KEYNAME: ADD KEY of a key that exists
	errLockWaitTimeout       = 1205
	errDeadlock              = 1213
	errRowIsReferenced       = 1451
	errNoReferencedRow       = 1452
	errDataTooLong           = 1406
	errUnknownSystemVariable = 1193
	errServerShutdown        = 1053
	errTooManyConnections    = 1040
	errReadOnly              = 1290 // --read-only (ER_OPTION_PREVENTS_STATEMENT)
	errReadOnlyTx            = 1836 // ER_READ_ONLY_MODE
	errIdleDisconnect        = 4031 // ER_CLIENT_INTERACTION_TIMEOUT
	errConnectionKilled      = 1927
	errCheckMySQL            = 3819
	errCheckMariaDB          = 4025
)

func code(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// isConnLoss reports whether err may have lost the answer to a statement
// the server did run: the connection broke mid-call.
func isConnLoss(err error) bool {
	if errors.Is(err, mysql.ErrInvalidConn) || errors.Is(err, driver.ErrBadConn) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// fail formats an error of the store like fmt.Errorf and marks a lost
// connection as one (see connLost).
func fail(format string, args ...any) error { return outageErr(fmt.Errorf(format, args...)) }

// outageErr marks err as a lost connection when the driver lost the
// connection under the call: go-sql-driver reports that as
// mysql.ErrInvalidConn or driver.ErrBadConn, and the server as error
// 1053 (shutdown in progress) or 1927 (connection killed). Marked errors
// also match io.ErrUnexpectedEOF, what the driver read, so that callers
// that classify outages by the standard library's errors (the server's
// 503s) recognise them without importing the driver.
func outageErr(err error) error {
	if err == nil {
		return nil
	}
	var lost connLost
	if errors.As(err, &lost) {
		return err
	}
	if errors.Is(err, mysql.ErrInvalidConn) || errors.Is(err, driver.ErrBadConn) {
		return connLost{err}
	}
	switch code(err) {
	case errServerShutdown, errConnectionKilled:
		return connLost{err}
	case errTooManyConnections, errLockWaitTimeout, errDeadlock, errReadOnly, errReadOnlyTx, errIdleDisconnect:
		// The server is overloaded, read-only (a replica, or a primary
		// being failed over) or too contended right now: the same call
		// may succeed later. Deadlocks and lock waits reach here only
		// after retry gave up on them.
		return unavailable{err}
	}
	return err
}

// unavailable is an error of a server that cannot serve the call now but
// may later; it matches pharox.ErrUnavailable.
type unavailable struct{ error }

func (e unavailable) Unwrap() []error { return []error{e.error, pharox.ErrUnavailable} }

// connLost is an error of a connection lost under a call.
type connLost struct{ error }

func (e connLost) Unwrap() []error { return []error{e.error, io.ErrUnexpectedEOF} }

// errAfterCommit asks inTx to commit and then return err: an operation that
// fails but must keep a side effect, such as reclaiming the expired lease a
// renewal found.
type errAfterCommit struct{ err error }

func (e errAfterCommit) Error() string { return e.err.Error() }

// txAttempts bounds how often inTx runs a transaction that InnoDB chose as
// a deadlock victim.
const txAttempts = 8

// inTx runs fn in a database/sql READ COMMITTED transaction, with the
// deadlock retries of run. Admin operations use it; the hot path uses run.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return s.retry(ctx, func() error { return s.txOnce(ctx, fn) })
}

// retry runs try again while InnoDB chose it as a deadlock victim (or it
// hit a lock wait timeout), up to txAttempts times: the rollback undid
// everything, so running it again is safe.
func (s *Store) retry(ctx context.Context, try func() error) error {
	backoff := 200 * time.Microsecond
	for attempt := 1; ; attempt++ {
		err := try()
		if c := code(err); (c == errDeadlock || c == errLockWaitTimeout) && attempt < txAttempts {
			if err := sleep(ctx, backoff/2+rand.N(backoff/2+1)); err != nil {
				return err
			}
			backoff = min(backoff*2, 20*time.Millisecond)
			continue
		}
		return err
	}
}

func (s *Store) txOnce(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	tx, err := s.db.BeginTx(ctx, s.txOpts)
	if err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			tx.Rollback()
			panic(p)
		}
	}()
	err = fn(tx)
	var keep errAfterCommit
	if err != nil && !errors.As(err, &keep) {
		tx.Rollback()
		return err
	}
	if cerr := tx.Commit(); cerr != nil {
		return cerr
	}
	if err != nil {
		return keep.err
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// utc returns a database time in UTC (the driver reads DATETIME as UTC).
func utc(t time.Time) time.Time { return t.UTC() }

// micro truncates a caller's time to what DATETIME(6) stores.
func micro(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func idArg(id uuid.UUID) string { return id.String() }
