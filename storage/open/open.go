// Package open opens a pharox storage driver from a URL, so that commands
// and services pick their store by configuration:
//
//	memory://                                  in-process, lost on exit
//	sqlite://pharox.db, sqlite:///abs/path.db  embedded, persistent
//	postgres://user@host:5432/db?schema=name   shared by many processes and hosts
//	redis://host:6379/0?prefix=name:           shared, for very high lease volume
//
// PostgreSQL schemas are migrated on open (safe from many processes at
// once); SQLite files are created and migrated on open, and run with
// synchronous=FULL, so a committed lease survives power loss. The schema and
// prefix parameters are pharox's own and are not passed to the driver, nor
// is max_batch, which sets how many concurrent calls the shared stores may
// serve with one statement or script (postgres.WithMaxBatch,
// redis.WithMaxBatch; 1 turns batching off).
package open

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
	"github.com/pharox/pharox/storage/postgres"
	"github.com/pharox/pharox/storage/redis"
	"github.com/pharox/pharox/storage/sqlite"
)

// DefaultURL is the store `pharox serve` uses when none is configured.
const DefaultURL = "sqlite://pharox.db"

// Open returns the store the URL names. The caller closes it; closing it
// also closes the connections Open made.
func Open(ctx context.Context, rawURL string) (pharox.Storage, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, fmt.Errorf("%w: storage URL %q has no scheme (want memory://, sqlite://, postgres:// or redis://)", pharox.ErrInvalidArgument, Redact(rawURL))
	}
	switch strings.ToLower(scheme) {
	case "memory", "mem":
		return memory.New(), nil
	case "sqlite", "sqlite3", "file":
		path, _, _ := strings.Cut(rest, "?")
		if path == "" {
			return nil, fmt.Errorf("%w: sqlite storage URL needs a file path, as in sqlite://pharox.db", pharox.ErrInvalidArgument)
		}
		// FULL: as a service's store, an acknowledged lease must survive
		// an OS crash or power loss (NORMAL may forget the last commits).
		return sqlite.Open(ctx, path, sqlite.WithSynchronous("FULL"))
	case "postgres", "postgresql":
		return openPostgres(ctx, rawURL)
	case "redis", "rediss":
		return openRedis(ctx, rawURL)
	}
	return nil, fmt.Errorf("%w: unsupported storage scheme %q (want memory://, sqlite://, postgres:// or redis://)", pharox.ErrInvalidArgument, scheme)
}

// takeParam removes a pharox-specific query parameter from raw.
func takeParam(raw, name string) (string, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("%w: storage URL %q: %v", pharox.ErrInvalidArgument, Redact(raw), errors.Unwrap(err))
	}
	q := u.Query()
	v := q.Get(name)
	q.Del(name)
	u.RawQuery = q.Encode()
	return u.String(), v, nil
}

type ownedPostgres struct {
	*postgres.Store
	pool *pgxpool.Pool
}

func (o ownedPostgres) Close() error {
	err := o.Store.Close()
	o.pool.Close()
	return err
}

// takeMaxBatch removes the max_batch parameter from raw and returns its
// value, 0 when it is absent.
func takeMaxBatch(raw string) (string, int, error) {
	rest, v, err := takeParam(raw, "max_batch")
	if err != nil || v == "" {
		return rest, 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return "", 0, fmt.Errorf("%w: storage URL %s: max_batch %q is not a positive integer", pharox.ErrInvalidArgument, Redact(raw), v)
	}
	return rest, n, nil
}

func openPostgres(ctx context.Context, raw string) (pharox.Storage, error) {
	dsn, schema, err := takeParam(raw, "schema")
	if err != nil {
		return nil, err
	}
	dsn, maxBatch, err := takeMaxBatch(dsn)
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: postgres URL %s: %v", pharox.ErrInvalidArgument, Redact(raw), err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	var opts []postgres.Option
	if schema != "" {
		opts = append(opts, postgres.WithSchema(schema))
	}
	if err := postgres.Migrate(ctx, pool, opts...); err != nil {
		pool.Close()
		return nil, err
	}
	if maxBatch > 0 {
		opts = append(opts, postgres.WithMaxBatch(maxBatch))
	}
	store, err := postgres.New(ctx, pool, opts...)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return ownedPostgres{store, pool}, nil
}

type ownedRedis struct {
	*redis.Store
	client *goredis.Client
}

func (o ownedRedis) Close() error {
	return errors.Join(o.Store.Close(), o.client.Close())
}

func openRedis(ctx context.Context, raw string) (pharox.Storage, error) {
	dsn, prefix, err := takeParam(raw, "prefix")
	if err != nil {
		return nil, err
	}
	dsn, maxBatch, err := takeMaxBatch(dsn)
	if err != nil {
		return nil, err
	}
	opt, err := goredis.ParseURL(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: redis URL %s: %v", pharox.ErrInvalidArgument, Redact(raw), err)
	}
	client := goredis.NewClient(opt)
	var opts []redis.Option
	if prefix != "" {
		opts = append(opts, redis.WithPrefix(prefix))
	}
	if maxBatch > 0 {
		opts = append(opts, redis.WithMaxBatch(maxBatch))
	}
	store, err := redis.New(client, opts...)
	if err != nil {
		client.Close()
		return nil, err
	}
	if err := store.Ping(ctx); err != nil {
		client.Close()
		return nil, err
	}
	return ownedRedis{store, client}, nil
}

// passwordParam matches a password given as a query parameter or in a
// key=value DSN, both of which pgx accepts.
var passwordParam = regexp.MustCompile(`(?i)\b(password|passwd|pwd)(\s*=\s*)('(?:[^'\\]|\\.)*'?|[^&\s]*)`)

// Redact hides the password of a storage URL, for logs and errors.
func Redact(raw string) string {
	raw = passwordParam.ReplaceAllString(raw, "${1}${2}xxxxx")
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return raw
	}
	if user, _, hasPw := strings.Cut(rest[:at], ":"); hasPw {
		return scheme + "://" + user + ":xxxxx" + rest[at:]
	}
	return raw
}
