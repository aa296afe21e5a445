package mysql

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migration is one embedded SQL file, named NNNN_description.sql.
type migration struct {
	version int
	name    string
	// stmts are the file's statements: MySQL runs one per call unless the
	// DSN enables multiStatements, which the store does not need.
	stmts []string
}

// loadMigrations reads the embedded migrations in version order.
func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v < 1 {
			return nil, fmt.Errorf("mysql: migration %q is not named NNNN_description.sql", e.Name())
		}
		body, err := migrationFS.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), stmts: splitStatements(string(body))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("mysql: two migrations with version %d", out[i].version)
		}
	}
	return out, nil
}

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
func latestVersion() int {
	ms, err := loadMigrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

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
	if err := migrate(ctx, db, cfg.prefix); err != nil {
		return fmt.Errorf("mysql: migrate tables %s*: %w", cfg.prefix, err)
	}
	return nil
}

func migrate(ctx context.Context, db *sql.DB, prefix string) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
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

	q := func(s string) string { return strings.ReplaceAll(s, "{p}", prefix) }
	if _, err := conn.ExecContext(ctx, q(`CREATE TABLE IF NOT EXISTS {p}schema_migrations (
		version    INT NOT NULL PRIMARY KEY,
		name       VARCHAR(255) NOT NULL,
		applied_at DATETIME(6) NOT NULL) ENGINE = InnoDB`)); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	rows, err := conn.QueryContext(ctx, q(`SELECT version FROM {p}schema_migrations`))
	if err != nil {
		return err
	}
	applied := map[int]bool{}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return err
		}
		applied[v] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, m := range ms {
		if applied[m.version] {
			continue
		}
		for _, st := range m.stmts {
			if _, err := conn.ExecContext(ctx, q(st)); err != nil && code(err) != errDupFieldName {
				// A duplicate column is an ADD COLUMN a crashed run
				// already applied (MySQL has no ADD COLUMN IF NOT EXISTS).
				return fmt.Errorf("apply %s: %w", m.name, err)
			}
		}
		if _, err := conn.ExecContext(ctx, q(`INSERT INTO {p}schema_migrations (version, name, applied_at) VALUES (?, ?, UTC_TIMESTAMP(6))`),
			m.version, m.name); err != nil {
			return fmt.Errorf("record %s: %w", m.name, err)
		}
	}
	return nil
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
