package open

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/mysql"
	"github.com/pharox/pharox/storage/postgres"
	"github.com/pharox/pharox/storage/sqlite"
)

// ErrNoMigrations means the URL names a store without a schema (memory://,
// redis://, redis+sentinel://): there is nothing to migrate.
var ErrNoMigrations = errors.New("the store has no schema migrations")

// Migrate brings the schema of the SQL store rawURL names (sqlite://,
// postgres://, mysql://, with their schema and prefix parameters) to the
// version this pharox needs, as Open would on its own. It is for operators
// who run migrations as a step of their own, before starting new
// processes; it is safe while other processes use the store. A schema
// migrated by a newer pharox is refused with an error wrapping the
// stores' ErrSchemaTooNew and naming both versions; a store without a
// schema gives ErrNoMigrations.
func Migrate(ctx context.Context, rawURL string) error {
	return migrateURL(ctx, rawURL, nil)
}

// WritePendingMigrations writes to w the SQL that Migrate would run on the
// store rawURL names, as one script (each migration after a comment naming
// its file, with the statement that records it), changing nothing.
func WritePendingMigrations(ctx context.Context, w io.Writer, rawURL string) error {
	if w == nil {
		return fmt.Errorf("%w: open: nil writer", pharox.ErrInvalidArgument)
	}
	return migrateURL(ctx, rawURL, w)
}

// migrateURL migrates the store, or with w set prints what it would do.
func migrateURL(ctx context.Context, rawURL string, w io.Writer) error {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return fmt.Errorf("%w: storage URL %q has no scheme (want sqlite://, postgres:// or mysql://)", pharox.ErrInvalidArgument, Redact(rawURL))
	}
	switch strings.ToLower(scheme) {
	case "memory", "mem", "redis", "rediss", "redis+sentinel", "rediss+sentinel":
		return fmt.Errorf("%s:// %w", strings.ToLower(scheme), ErrNoMigrations)
	case "sqlite", "sqlite3", "file":
		path, _, _ := strings.Cut(rest, "?")
		if path == "" {
			return fmt.Errorf("%w: sqlite storage URL needs a file path, as in sqlite://pharox.db", pharox.ErrInvalidArgument)
		}
		if w != nil {
			return sqlite.WritePendingMigrations(ctx, w, path)
		}
		s, err := sqlite.Open(ctx, path, sqlite.WithSynchronous("FULL"))
		if err != nil {
			return err
		}
		return s.Close()
	case "postgres", "postgresql":
		dsn, schema, err := takeParam(rawURL, "schema")
		if err != nil {
			return err
		}
		dsn, _, err = takeMaxBatch(dsn)
		if err != nil {
			return err
		}
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			return fmt.Errorf("%w: postgres URL %s: %v", pharox.ErrInvalidArgument, Redact(rawURL), err)
		}
		cfg.MaxConns = 2
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			return fmt.Errorf("postgres: connect: %w", err)
		}
		defer pool.Close()
		var opts []postgres.Option
		if schema != "" {
			opts = append(opts, postgres.WithSchema(schema))
		}
		if w != nil {
			return postgres.WritePendingMigrations(ctx, w, pool, opts...)
		}
		return postgres.Migrate(ctx, pool, opts...)
	case "mysql", "mariadb":
		rest, prefix, err := takeParam(rawURL, "prefix")
		if err != nil {
			return err
		}
		dsn, err := mysql.DSNFromURL(rest)
		if err != nil {
			return fmt.Errorf("mysql URL %s: %w", Redact(rawURL), err)
		}
		var opts []mysql.Option
		if prefix != "" {
			opts = append(opts, mysql.WithTablePrefix(prefix))
		}
		if w == nil {
			s, err := mysql.Open(ctx, dsn, opts...)
			if err != nil {
				return err
			}
			return s.Close()
		}
		db, err := sql.Open("mysql", dsn)
		if err != nil {
			return fmt.Errorf("%w: mysql URL %s: %v", pharox.ErrInvalidArgument, Redact(rawURL), err)
		}
		defer db.Close()
		return mysql.WritePendingMigrations(ctx, w, db, opts...)
	}
	return fmt.Errorf("%w: unsupported storage scheme %q (want sqlite://, postgres:// or mysql://)", pharox.ErrInvalidArgument, scheme)
}
