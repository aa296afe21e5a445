// Package open opens a pharox storage driver from a URL, so that commands
// and services pick their store by configuration:
//
//	memory://                                  in-process, lost on exit
//	sqlite://pharox.db, sqlite:///abs/path.db  embedded, persistent
//	postgres://user@host:5432/db?schema=name   shared by many processes and hosts
//	redis://host:6379/0?prefix=name:           shared, for very high lease volume
//	redis+sentinel://s1,s2,s3/mymaster/0       Redis found through Sentinel
//	mysql://user@host:3306/db?prefix=name_     shared, on MySQL 8 or MariaDB 10.6+
//	mongodb://user@host:27017/db?prefix=name_  shared, on MongoDB 6+ (or FerretDB)
//
// High availability comes from the engines' own tools. A PostgreSQL URL
// may name several hosts, postgres://user@a:5432,b:5432/db?
// target_session_attrs=read-write (pgx's multi-host syntax): each new
// connection goes to the host that accepts writes, so after a failover
// the service reconnects to the promoted primary by itself. A
// redis+sentinel:// (or rediss+sentinel://) URL names the Sentinels
// (port 26379 unless given) and, as its first path segment, the monitored
// primary's name, then optionally the database number; the user and
// password in it are the Sentinels', the password query parameter the
// primary's. go-redis's failover client then asks the Sentinels for the
// current primary and follows a failover. Other query parameters go to
// go-redis as in its ParseFailoverURL.
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
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
	"github.com/pharox/pharox/storage/mongo"
	"github.com/pharox/pharox/storage/mysql"
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
		return nil, fmt.Errorf("%w: storage URL %q has no scheme (want memory://, sqlite://, postgres://, redis://, redis+sentinel://, mysql:// or mongodb://)", pharox.ErrInvalidArgument, Redact(rawURL))
	}
	switch strings.ToLower(scheme) {
	case "memory", "mem":
		s, err := memory.New()
		if err != nil {
			return nil, err // a nil *memory.Store must not become a non-nil Storage
		}
		return s, nil
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
	case "redis+sentinel", "rediss+sentinel":
		failoverURL, err := sentinelToFailoverURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("%w: redis sentinel URL %s: %v", pharox.ErrInvalidArgument, Redact(rawURL), err)
		}
		return openRedisFailover(ctx, failoverURL, rawURL)
	case "mysql", "mariadb":
		return openMySQL(ctx, rawURL)
	case "mongodb", "mongodb+srv":
		return openMongo(ctx, rawURL)
	}
	return nil, fmt.Errorf("%w: unsupported storage scheme %q (want memory://, sqlite://, postgres://, redis://, redis+sentinel://, mysql:// or mongodb://)", pharox.ErrInvalidArgument, scheme)
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
	return openRedisFailover(ctx, raw, "")
}

// openRedisFailover opens a Redis store. sentinelURL, when not empty, is
// the redis+sentinel:// URL the user gave, and raw the go-redis failover
// URL made from it (see sentinelToFailoverURL).
func openRedisFailover(ctx context.Context, raw, sentinelURL string) (pharox.Storage, error) {
	shown := raw
	if sentinelURL != "" {
		shown = sentinelURL
	}
	dsn, prefix, err := takeParam(raw, "prefix")
	if err != nil {
		return nil, err
	}
	dsn, maxBatch, err := takeMaxBatch(dsn)
	if err != nil {
		return nil, err
	}
	var client *goredis.Client
	if sentinelURL != "" {
		opt, err := goredis.ParseFailoverURL(dsn)
		if err != nil {
			return nil, fmt.Errorf("%w: redis sentinel URL %s: %v", pharox.ErrInvalidArgument, Redact(shown), err)
		}
		client = goredis.NewFailoverClient(opt)
	} else {
		opt, err := goredis.ParseURL(dsn)
		if err != nil {
			return nil, fmt.Errorf("%w: redis URL %s: %v", pharox.ErrInvalidArgument, Redact(raw), err)
		}
		client = goredis.NewClient(opt)
	}
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

// defaultSentinelPort is the port of a Sentinel named without one.
const defaultSentinelPort = "26379"

// sentinelToFailoverURL rewrites redis+sentinel://[user:pass@]s1[:port],
// s2.../primary[/db]?params into the URL go-redis's ParseFailoverURL
// reads: the first Sentinel as the host, the others as addr parameters,
// the primary's name as master_name. The Sentinel list is split by hand:
// net/url does not parse a comma-separated host list whose first host has
// no port.
func sentinelToFailoverURL(raw string) (string, error) {
	scheme, rest, _ := strings.Cut(raw, "://")
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	var user *url.Userinfo
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		u, err := url.Parse("x://" + authority[:at+1] + "h")
		if err != nil {
			return "", errors.New("malformed user information")
		}
		user, authority = u.User, authority[at+1:]
	}
	u, err := url.Parse("x://h" + tail)
	if err != nil {
		return "", errors.Unwrap(err)
	}
	var hosts []string
	for h := range strings.SplitSeq(authority, ",") {
		if h == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(h, defaultSentinelPort)
		}
		hosts = append(hosts, h)
	}
	if len(hosts) == 0 {
		return "", errors.New("no Sentinel host given")
	}
	segs := strings.FieldsFunc(u.Path, func(r rune) bool { return r == '/' })
	if len(segs) == 0 || len(segs) > 2 {
		return "", errors.New("the path must be /primary-name or /primary-name/db")
	}
	q := u.Query()
	q.Set("master_name", segs[0])
	for _, h := range hosts[1:] {
		q.Add("addr", h)
	}
	g := url.URL{Scheme: strings.TrimSuffix(strings.ToLower(scheme), "+sentinel"), User: user, Host: hosts[0], RawQuery: q.Encode()}
	if len(segs) == 2 {
		g.Path = "/" + segs[1]
	}
	return g.String(), nil
}

// openMySQL opens (and migrates) a MySQL or MariaDB store; the prefix
// parameter is the table prefix (mysql.WithTablePrefix).
func openMySQL(ctx context.Context, raw string) (pharox.Storage, error) {
	rest, prefix, err := takeParam(raw, "prefix")
	if err != nil {
		return nil, err
	}
	if _, mb, _ := takeParam(rest, "max_batch"); mb != "" {
		return nil, fmt.Errorf("%w: storage URL %s: max_batch is not a mysql:// parameter (the MySQL store does not batch calls)", pharox.ErrInvalidArgument, Redact(raw))
	}
	dsn, err := mysql.DSNFromURL(rest)
	if err != nil {
		return nil, fmt.Errorf("mysql URL %s: %w", Redact(raw), err)
	}
	var opts []mysql.Option
	if prefix != "" {
		opts = append(opts, mysql.WithTablePrefix(prefix))
	}
	return mysql.Open(ctx, dsn, opts...)
}

// openMongo opens a MongoDB store; the prefix parameter is the collection
// prefix (mongo.WithCollectionPrefix), every other parameter goes to the
// driver.
func openMongo(ctx context.Context, raw string) (pharox.Storage, error) {
	rest, prefix, err := takeParam(raw, "prefix")
	if err != nil {
		return nil, err
	}
	if _, mb, _ := takeParam(rest, "max_batch"); mb != "" {
		return nil, fmt.Errorf("%w: storage URL %s: max_batch is not a mongodb:// parameter (the MongoDB store does not batch calls)", pharox.ErrInvalidArgument, Redact(raw))
	}
	var opts []mongo.Option
	if prefix != "" {
		opts = append(opts, mongo.WithCollectionPrefix(prefix))
	}
	s, err := mongo.Open(ctx, rest, opts...)
	if err != nil {
		return nil, fmt.Errorf("mongodb URL %s: %w", Redact(raw), err)
	}
	return s, nil
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
