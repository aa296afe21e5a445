package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pharox/pharox/internal/migrate"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migrations are the embedded files, checked by internal/migrate (named
// NNNN_description.sql, numbered from 1 without gaps); a bad file panics
// when the package loads, so every test of the package shows it.
var migrations = migrate.MustLoad(migrationFS, "migrations")

// latestVersion is the schema version this binary needs.
func latestVersion() int { return migrate.Latest(migrations) }

// versionTable creates the schema and its version table.
const versionTable = `CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
	version    integer     PRIMARY KEY,
	name       text        NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT clock_timestamp());`

// Migrate creates the store's schema (WithSchema, default "pharox") and
// applies every embedded migration it does not have yet. It is safe to call
// from many processes at once: all of it runs in one transaction that first
// takes a transaction-scoped advisory lock derived from the schema name, so
// concurrent callers apply each migration exactly once and the others then
// find nothing to do. Applied versions are recorded in the schema's
// schema_migrations table. A schema migrated by a newer pharox is refused
// with ErrSchemaTooNew. Only WithSchema matters among opts.
func Migrate(ctx context.Context, pool *pgxpool.Pool, opts ...Option) error {
	if pool == nil {
		return fmt.Errorf("postgres: migrate: pool is nil")
	}
	cfg, err := buildConfig(opts)
	if err != nil {
		return err
	}
	schema := quoteIdent(cfg.schema)
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('pharox.migrate:' || $1, 0))`, cfg.schema); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		if _, err := tx.Exec(ctx, strings.ReplaceAll(versionTable, "{schema}", schema)); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		_, err := migrate.Run(ctx, migrations, pgTarget{tx: tx, schema: schema}, "schema "+cfg.schema)
		return err
	})
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	return nil
}

// pgTarget is a schema inside Migrate's transaction.
type pgTarget struct {
	tx     pgx.Tx
	schema string // quoted
}

func (t pgTarget) Version(ctx context.Context) (int, error) {
	var v int32
	err := t.tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+t.schema+`.schema_migrations`).Scan(&v)
	return int(v), err
}

func (t pgTarget) Apply(ctx context.Context, m migrate.Migration) error {
	// SET LOCAL ends with the transaction, so a pooled connection never
	// leaks this search_path to other users of the pool.
	if _, err := t.tx.Exec(ctx, `SET LOCAL search_path TO `+t.schema); err != nil {
		return err
	}
	if _, err := t.tx.Exec(ctx, m.SQL); err != nil {
		return err
	}
	_, err := t.tx.Exec(ctx, `INSERT INTO `+t.schema+`.schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.File)
	return err
}

// WritePendingMigrations writes to w, as one SQL script, the migrations
// Migrate would apply to the schema (WithSchema) and the statements that
// record them, without changing the database: for operators who review or
// run migrations themselves. A schema migrated by a newer pharox is
// refused with ErrSchemaTooNew.
func WritePendingMigrations(ctx context.Context, w io.Writer, pool *pgxpool.Pool, opts ...Option) error {
	if pool == nil {
		return fmt.Errorf("postgres: migrate: pool is nil")
	}
	cfg, err := buildConfig(opts)
	if err != nil {
		return err
	}
	have, err := schemaVersion(ctx, pool, cfg.schema)
	if err != nil {
		return fmt.Errorf("postgres: read schema version of %s: %w", cfg.schema, err)
	}
	what := "schema " + cfg.schema
	pending, err := migrate.Pending(migrations, have, what)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	schema := quoteIdent(cfg.schema)
	return migrate.Write(w, pending, what, strings.ReplaceAll(versionTable, "{schema}", schema), func(m migrate.Migration) string {
		return "SET search_path TO " + schema + ";\n" + strings.TrimRight(m.SQL, "\n") + "\n" +
			"INSERT INTO " + schema + ".schema_migrations (version, name) VALUES (" + strconv.Itoa(m.Version) + ", '" + m.File + "');"
	})
}

// schemaVersion returns the highest applied migration, 0 when none.
func schemaVersion(ctx context.Context, pool *pgxpool.Pool, schema string) (int, error) {
	var exists bool
	err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, quoteIdent(schema)+".schema_migrations").Scan(&exists)
	if err != nil {
		return 0, err
	}
	if !exists {
		return 0, nil
	}
	var v int32
	err = pool.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+quoteIdent(schema)+`.schema_migrations`).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return int(v), err
}
