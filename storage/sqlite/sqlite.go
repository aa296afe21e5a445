package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/migrate"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Option configures a Store. An option whose argument is out of range
// makes Open fail with an error wrapping [pharox.ErrInvalidArgument]; nil
// options are ignored.
type Option func(*config) error

type config struct {
	busyTimeout time.Duration
	synchronous string
	readConns   int
	now         func() time.Time
	budget      int
}

// WithBusyTimeout sets how long an operation waits for another process's
// write lock before failing (default 10s; 0 fails at once, a negative
// timeout is refused). Within one process writers queue on the store's
// single write connection and never hit this limit.
func WithBusyTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("%w: sqlite: WithBusyTimeout: timeout must not be negative, got %v", pharox.ErrInvalidArgument, d)
		}
		c.busyTimeout = d
		return nil
	}
}

// WithSynchronous sets PRAGMA synchronous: "NORMAL" (the default) keeps every
// committed transaction across process crashes but may lose the last ones on
// power loss; "FULL" also survives power loss at the cost of an fsync per
// transaction. "OFF" and "EXTRA" are accepted too, in any case; any other
// mode is refused.
func WithSynchronous(mode string) Option {
	return func(c *config) error {
		switch m := strings.ToUpper(mode); m {
		case "OFF", "NORMAL", "FULL", "EXTRA":
			c.synchronous = m
			return nil
		}
		return fmt.Errorf("%w: sqlite: WithSynchronous: mode must be OFF, NORMAL, FULL or EXTRA, got %q", pharox.ErrInvalidArgument, mode)
	}
}

// WithReadConns sets the size of the read connection pool (default 4; n
// must be at least 1). Reads run in parallel with each other and with the
// writer under WAL.
func WithReadConns(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("%w: sqlite: WithReadConns: count must be at least 1, got %d", pharox.ErrInvalidArgument, n)
		}
		c.readConns = n
		return nil
	}
}

// WithFilterScanBudget sets how many proxies with a free slot one
// acquisition examines, at most, for one its filters accept (default
// DefaultFilterScanBudget). Filters have no index of their own, so a filter
// that rejects nearly every proxy of a large pool would otherwise walk all
// of them while holding the database's write lock; past the budget the
// acquisition fails with pharox.ErrNoProxyAvailable, saying the filter is
// too selective. n must be at least 1.
func WithFilterScanBudget(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("%w: sqlite: WithFilterScanBudget: budget must be at least 1, got %d", pharox.ErrInvalidArgument, n)
		}
		c.budget = n
		return nil
	}
}

// WithClock replaces the store's clock, for tests; now must not be nil. It
// must return the real time when several processes share the file, since
// each stamps leases with its own clock.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return fmt.Errorf("%w: sqlite: WithClock: clock is nil", pharox.ErrInvalidArgument)
		}
		c.now = now
		return nil
	}
}

// Store is a pharox.Storage kept in one SQLite database file. It is safe for
// concurrent use by many goroutines and by many processes opening the same
// file on the same machine.
type Store struct {
	// w is the single write connection: every read-modify-write runs on it
	// inside BEGIN IMMEDIATE, so goroutines of this process queue in
	// database/sql (cheap) instead of spinning on SQLite's busy handler, and
	// other processes are held off by the file lock.
	w *sql.DB
	// r serves plain reads; under WAL they never block the writer.
	r    *sql.DB
	path string
	now  func() time.Time
	// busyTimeout bounds retries of SQLITE_BUSY errors SQLite reports
	// without calling its busy handler.
	busyTimeout time.Duration

	// filterBudget bounds a filtered walk; see WithFilterScanBudget.
	filterBudget int

	// stmts caches statements prepared on w, keyed by SQL text.
	stmtMu sync.Mutex
	stmts  map[string]*sql.Stmt
}

var _ pharox.Storage = (*Store)(nil)

// maxCachedStmts bounds the statement cache: acquisition SQL varies with the
// shape of the filters, which callers control.
const maxCachedStmts = 256

// Open opens (creating if needed) the database file at path, applies any
// pending schema migrations and returns the store. Several processes may
// open the same file at once; migrations run under the write lock, so only
// one applies each.
func Open(ctx context.Context, path string, opts ...Option) (*Store, error) {
	cfg := config{busyTimeout: 10 * time.Second, synchronous: "NORMAL", readConns: 4, now: time.Now, budget: DefaultFilterScanBudget}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if strings.TrimSpace(path) == "" {
		return nil, fmt.Errorf("sqlite: open: %w: database path is empty", pharox.ErrInvalidArgument)
	}
	if path == ":memory:" || strings.HasPrefix(path, "file::memory:") {
		return nil, fmt.Errorf("sqlite: open: %w: in-memory databases are not supported, use storage/memory", pharox.ErrInvalidArgument)
	}
	if strings.ContainsRune(path, 0) {
		return nil, fmt.Errorf("sqlite: open: %w: database path contains a NUL byte", pharox.ErrInvalidArgument)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}

	// A file: URI with an escaped path, so that '?', '#' or '%' in a file
	// name cannot be taken for DSN parameters.
	base := "file:" + (&url.URL{Path: filepath.ToSlash(abs)}).EscapedPath()
	common := "?_pragma=busy_timeout(" + strconv.FormatInt(cfg.busyTimeout.Milliseconds(), 10) + ")" +
		"&_pragma=foreign_keys(1)" +
		"&_pragma=synchronous(" + cfg.synchronous + ")"
	w, err := sql.Open("sqlite", base+common+"&_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)

	s := &Store{w: w, path: abs, now: cfg.now, stmts: make(map[string]*sql.Stmt), busyTimeout: cfg.busyTimeout, filterBudget: cfg.budget}
	if err := s.retryBusy(ctx, func() error { return s.migrate(ctx) }); err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	// Readers open after the writer switched the file to WAL (a persistent
	// setting), and are read-only so a bug cannot write outside the lock.
	r, err := sql.Open("sqlite", base+common+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	r.SetMaxOpenConns(cfg.readConns)
	r.SetMaxIdleConns(cfg.readConns)
	s.r = r
	if err := r.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	return s, nil
}

// Path returns the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// Ping reports whether the database answers.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.r.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("sqlite: ping: %w", err)
	}
	return nil
}

// Close closes the database. The WAL is checkpointed and removed when the
// last connection to the file, in any process, closes.
func (s *Store) Close() error {
	s.stmtMu.Lock()
	for _, st := range s.stmts {
		st.Close()
	}
	s.stmts = nil
	s.stmtMu.Unlock()
	var errs []error
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sqlite: close: %w", err)
	}
	return nil
}

// migrations are the embedded files, checked by internal/migrate (named
// NNNN_description.sql, numbered from 1 without gaps); a bad file panics
// when the package loads, so every test of the package shows it.
var migrations = migrate.MustLoad(migrationFS, "migrations")

// versionTable records the applied migrations.
const versionTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER PRIMARY KEY,
	name       TEXT NOT NULL,
	applied_at INTEGER NOT NULL);`

// ErrSchemaTooNew means the file was migrated by a newer pharox than this
// one: Open refuses it rather than run statements written for an older
// layout. It is the same value in every SQL store.
var ErrSchemaTooNew = migrate.ErrSchemaTooNew

// migrate applies pending migrations in one IMMEDIATE transaction: a second
// process opening the file at the same moment waits for the lock, then finds
// them applied.
func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: begin: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, versionTable); err != nil {
		return fmt.Errorf("migrate: create: %w", err)
	}
	if _, err := migrate.Run(ctx, migrations, sqliteTarget{tx: tx, now: s.now}, "the database file"); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// sqliteTarget is the file inside migrate's transaction.
type sqliteTarget struct {
	tx  *sql.Tx
	now func() time.Time
}

func (t sqliteTarget) Version(ctx context.Context) (int, error) {
	var v int
	err := t.tx.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

func (t sqliteTarget) Apply(ctx context.Context, m migrate.Migration) error {
	if _, err := t.tx.ExecContext(ctx, m.SQL); err != nil {
		return err
	}
	_, err := t.tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
		m.Version, m.Description, micros(t.now()))
	return err
}

// WritePendingMigrations writes to w, as one SQL script, the migrations
// Open would apply to the database file at path and the statements that
// record them, without changing the file (it is opened read-only; a
// missing file has every migration pending): for operators who review
// migrations. A file migrated by a newer pharox is refused with
// ErrSchemaTooNew.
func WritePendingMigrations(ctx context.Context, w io.Writer, path string) error {
	have := 0
	if _, err := os.Stat(path); err == nil {
		abs, err := filepath.Abs(path)
		if err != nil {
			return fmt.Errorf("sqlite: %s: %w", path, err)
		}
		db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: filepath.ToSlash(abs)}).EscapedPath()+"?mode=ro")
		if err != nil {
			return fmt.Errorf("sqlite: open %s: %w", path, err)
		}
		defer db.Close()
		var n int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&n); err != nil {
			return fmt.Errorf("sqlite: open %s: %w", path, err)
		}
		if n > 0 {
			if err := db.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
				return fmt.Errorf("sqlite: schema version of %s: %w", path, err)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sqlite: %w", err)
	}
	what := "database file " + path
	pending, err := migrate.Pending(migrations, have, what)
	if err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	return migrate.Write(w, pending, what, versionTable, func(m migrate.Migration) string {
		return strings.TrimRight(m.SQL, "\n") + "\nINSERT INTO schema_migrations (version, name, applied_at) VALUES (" +
			strconv.Itoa(m.Version) + ", '" + m.Description + "', CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));"
	})
}

// SchemaVersion returns the latest migration applied to the file.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	if err := s.r.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("sqlite: schema version: %w", err)
	}
	return v, nil
}

// Synchronous returns the PRAGMA synchronous setting writes run with:
// OFF, NORMAL, FULL or EXTRA (see WithSynchronous).
func (s *Store) Synchronous(ctx context.Context) (string, error) {
	var v int
	if err := s.w.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&v); err != nil {
		return "", fmt.Errorf("sqlite: synchronous: %w", err)
	}
	if modes := []string{"OFF", "NORMAL", "FULL", "EXTRA"}; v >= 0 && v < len(modes) {
		return modes[v], nil
	}
	return "", fmt.Errorf("sqlite: synchronous: unknown setting %d", v)
}

// errAfterCommit asks writeTx to commit and then return err: an operation
// that fails but must keep a side effect, such as reclaiming the expired
// lease a renewal found.
type errAfterCommit struct{ err error }

func (e errAfterCommit) Error() string { return e.err.Error() }

// wtx is a write transaction with its statement cache.
type wtx struct {
	*sql.Tx
	ctx context.Context
	s   *Store
	// misses are queries this transaction had to prepare itself; writeTx
	// caches them once the write connection is free again.
	misses []string
}

// writeTx runs fn inside BEGIN IMMEDIATE on the write connection and commits
// when it returns nil. While fn runs this process holds the database's only
// write lock, so everything fn reads stays true until the commit.
func (s *Store) writeTx(ctx context.Context, fn func(tx *wtx) error) error {
	var tx *sql.Tx
	err := s.retryBusy(ctx, func() (err error) {
		tx, err = s.w.BeginTx(ctx, nil)
		return err
	})
	if err != nil {
		return err
	}
	t := &wtx{Tx: tx, ctx: ctx, s: s}
	defer func() {
		// A panic must not leave the transaction open: it would hold the
		// only write connection, and the database's write lock, forever.
		if p := recover(); p != nil {
			tx.Rollback()
			panic(p)
		}
	}()
	err = fn(t)
	var keep errAfterCommit
	if err != nil && !errors.As(err, &keep) {
		tx.Rollback()
		s.cacheStmts(t.misses)
		return err
	}
	if cerr := tx.Commit(); cerr != nil {
		return cerr
	}
	s.cacheStmts(t.misses)
	if err != nil {
		return keep.err
	}
	return nil
}

// cacheStmts prepares queries on the write pool. It must run outside any
// transaction: the pool has one connection, which a transaction holds.
func (s *Store) cacheStmts(queries []string) {
	for _, q := range queries {
		s.stmtMu.Lock()
		_, done := s.stmts[q]
		full := len(s.stmts) >= maxCachedStmts
		s.stmtMu.Unlock()
		if done || full {
			continue
		}
		st, err := s.w.Prepare(q)
		if err != nil {
			continue // the query will fail again, with its error, when used
		}
		s.stmtMu.Lock()
		if _, dup := s.stmts[q]; dup || s.stmts == nil {
			st.Close()
		} else {
			s.stmts[q] = st
		}
		s.stmtMu.Unlock()
	}
}

// stmt returns the statement for query bound to tx: the cached prepared
// statement when there is one, otherwise one prepared for this transaction.
func (tx *wtx) stmt(query string) (*sql.Stmt, error) {
	s := tx.s
	s.stmtMu.Lock()
	st, ok := s.stmts[query]
	s.stmtMu.Unlock()
	if ok {
		return tx.StmtContext(tx.ctx, st), nil
	}
	if !slices.Contains(tx.misses, query) {
		tx.misses = append(tx.misses, query)
	}
	return tx.PrepareContext(tx.ctx, query)
}

func (tx *wtx) exec(query string, args ...any) (sql.Result, error) {
	st, err := tx.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(tx.ctx, args...)
}

func (tx *wtx) query(query string, args ...any) (*sql.Rows, error) {
	st, err := tx.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(tx.ctx, args...)
}

func (tx *wtx) queryRow(query string, args ...any) *sql.Row {
	st, err := tx.stmt(query)
	if err != nil {
		// A *sql.Row cannot be built with an error from outside; run the
		// query unprepared so the error surfaces on Scan.
		return tx.QueryRowContext(tx.ctx, query, args...)
	}
	return st.QueryRowContext(tx.ctx, args...)
}

// retryBusy runs fn again while it fails with SQLITE_BUSY, up to the busy
// timeout. SQLite returns SQLITE_BUSY without waiting in a few cases, such as
// while another connection converts a new file to WAL or runs WAL recovery
// after a crash.
func (s *Store) retryBusy(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(s.busyTimeout)
	wait := time.Millisecond
	for {
		err := fn()
		if err == nil || !isBusy(err) || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(wait*2, 50*time.Millisecond)
	}
}

// isBusy reports whether err is SQLITE_BUSY or SQLITE_LOCKED, with any
// extended code.
func isBusy(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return true
		}
	}
	return false
}

// isConstraint reports whether err is a UNIQUE or PRIMARY KEY violation.
func isConstraint(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return true
		}
	}
	return false
}

// micros converts t to the stored form: microseconds since the epoch.
func micros(t time.Time) int64 { return t.UnixMicro() }

// fromMicros converts a stored timestamp back to UTC.
func fromMicros(v int64) time.Time { return time.UnixMicro(v).UTC() }

// stamp reads the clock the way every stored timestamp is taken.
func (s *Store) stamp() time.Time { return s.now().UTC().Truncate(time.Microsecond) }
