package mysql

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/pharox/pharox/internal/migrate"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migrations are the embedded files, checked by internal/migrate (named
// NNNN_description.sql, numbered from 1 without gaps); a bad file panics
// when the package loads, so every test of the package shows it.
var migrations = migrate.MustLoad(migrationFS, "migrations")

// ErrSchemaTooNew means the tables were migrated by a newer pharox than
// this one: New and Migrate refuse them rather than run statements written
// for an older layout. It is the same value in every SQL store.
var ErrSchemaTooNew = migrate.ErrSchemaTooNew

// splitStatements drops -- comment lines and splits at semicolons that end
// a line. Migration files keep to that form.
func splitStatements(body string) []string {
	var (
		out []string
		cur strings.Builder
	)
	for _, line := range strings.Split(body, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			out = append(out, strings.TrimSuffix(strings.TrimSpace(cur.String()), ";"))
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

// latestVersion is the schema version this binary needs.
func latestVersion() int { return migrate.Latest(migrations) }

// versionTable records the applied migrations.
const versionTable = `CREATE TABLE IF NOT EXISTS {p}schema_migrations (
	version    INT NOT NULL PRIMARY KEY,
	name       VARCHAR(255) NOT NULL,
	applied_at DATETIME(6) NOT NULL) ENGINE = InnoDB`

// lockName is the GET_LOCK name that serialises migrations of one set of
// tables: the current database and the prefix, hashed because lock names
// are limited to 64 characters.
func lockName(ctx context.Context, conn *sql.Conn, prefix string) (string, error) {
	var db sql.NullString
	if err := conn.QueryRowContext(ctx, `SELECT DATABASE()`).Scan(&db); err != nil {
		return "", err
	}
	if !db.Valid {
		return "", fmt.Errorf("the connection has no current database (name one in the DSN)")
	}
	sum := sha256.Sum256([]byte(db.String + "\x00" + prefix))
	return "pharox.migrate." + hex.EncodeToString(sum[:16]), nil
}

// migrateLockWait bounds how long Migrate waits for another process's
// migration.
const migrateLockWait = 120 // seconds

// Migrate creates the store's tables (WithTablePrefix, default "pharox_")
// in the connection's current database and applies every embedded
// migration they do not have yet. It is safe to call from many processes
// at once: it holds the named lock GET_LOCK("pharox.migrate.<hash of
// database and prefix>") on one connection while it reads the applied
// versions and applies the rest, so concurrent callers apply each
// migration exactly once and the others then find nothing to do. MySQL
// commits DDL statement by statement, so every migration statement is
// written to be re-runnable: one interrupted half-way (a crash) is applied
// again, whole, by the next Migrate. Applied versions are recorded in the
// prefix+"schema_migrations" table. Only WithTablePrefix matters among
// opts.
func Migrate(ctx context.Context, db *sql.DB, opts ...Option) error {
	if db == nil {
		return fmt.Errorf("mysql: migrate: db is nil")
	}
	cfg, err := buildConfig(opts)
	if err != nil {
		return err
	}
	if err := runMigrations(ctx, db, cfg.prefix); err != nil {
		return fmt.Errorf("mysql: migrate: %w", err)
	}
	return nil
}

func runMigrations(ctx context.Context, db *sql.DB, prefix string) error {
	// GET_LOCK belongs to a session: everything runs on one connection.
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	name, err := lockName(ctx, conn, prefix)
	if err != nil {
		return err
	}
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, `SELECT GET_LOCK(?, ?)`, name, migrateLockWait).Scan(&got); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if !got.Valid || got.Int64 != 1 {
		return fmt.Errorf("lock: another process held %s for %ds", name, migrateLockWait)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `DO RELEASE_LOCK(?)`, name)

	t := mysqlTarget{conn: conn, prefix: prefix}
	if _, err := conn.ExecContext(ctx, t.q(versionTable)); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	_, err = migrate.Run(ctx, migrations, t, "tables "+prefix+"*")
	return err
}

// mysqlTarget is a set of tables, on the connection that holds the
// migration lock.
type mysqlTarget struct {
	conn   *sql.Conn
	prefix string
}

func (t mysqlTarget) q(s string) string { return strings.ReplaceAll(s, "{p}", t.prefix) }

func (t mysqlTarget) Version(ctx context.Context) (int, error) {
	var v sql.NullInt64
	err := t.conn.QueryRowContext(ctx, t.q(`SELECT max(version) FROM {p}schema_migrations`)).Scan(&v)
	return int(v.Int64), err
}

// Apply runs m's statements one by one (MySQL runs one per call unless the
// DSN enables multiStatements, which the store does not need) and records
// it.
func (t mysqlTarget) Apply(ctx context.Context, m migrate.Migration) error {
	for _, st := range splitStatements(m.SQL) {
		if _, err := t.conn.ExecContext(ctx, t.q(st)); err != nil && code(err) != errDupFieldName && code(err) != errDupKeyName {
			// A duplicate column or key name is an ALTER TABLE ADD a
			// crashed run already applied (MySQL has no ADD COLUMN or
			// ADD KEY IF NOT EXISTS).
			return err
		}
	}
	_, err := t.conn.ExecContext(ctx, t.q(`INSERT INTO {p}schema_migrations (version, name, applied_at) VALUES (?, ?, UTC_TIMESTAMP(6))`),
		m.Version, m.File)
	return err
}

// WritePendingMigrations writes to w, as one SQL script, the migrations
// Migrate would apply to the tables (WithTablePrefix) in db's current
// database and the statements that record them, without changing the
// database: for operators who review or run migrations themselves. Tables
// migrated by a newer pharox are refused with ErrSchemaTooNew.
func WritePendingMigrations(ctx context.Context, w io.Writer, db *sql.DB, opts ...Option) error {
	if db == nil {
		return fmt.Errorf("mysql: migrate: db is nil")
	}
	cfg, err := buildConfig(opts)
	if err != nil {
		return err
	}
	have, err := schemaVersion(ctx, db, cfg.prefix)
	if err != nil {
		return fail("mysql: read schema version of tables %s*: %w", cfg.prefix, err)
	}
	what := "tables " + cfg.prefix + "*"
	pending, err := migrate.Pending(migrations, have, what)
	if err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	q := func(s string) string { return strings.ReplaceAll(s, "{p}", cfg.prefix) }
	return migrate.Write(w, pending, what, q(versionTable)+";", func(m migrate.Migration) string {
		var b strings.Builder
		for _, st := range splitStatements(m.SQL) {
			b.WriteString(q(st) + ";\n")
		}
		b.WriteString(q("INSERT INTO {p}schema_migrations (version, name, applied_at) VALUES (" + strconv.Itoa(m.Version) + ", '" + m.File + "', UTC_TIMESTAMP(6));"))
		return b.String()
	})
}

// schemaVersion returns the highest applied migration, 0 when none.
func schemaVersion(ctx context.Context, db *sql.DB, prefix string) (int, error) {
	var n int
	err := db.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.tables
		WHERE table_schema = DATABASE() AND table_name = ?`, prefix+"schema_migrations").Scan(&n)
	if err != nil || n == 0 {
		return 0, err
	}
	var v sql.NullInt64
	if err := db.QueryRowContext(ctx, `SELECT max(version) FROM `+prefix+`schema_migrations`).Scan(&v); err != nil {
		return 0, err
	}
	return int(v.Int64), nil
}
