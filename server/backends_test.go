package server_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/redistest"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/open"
)

// Variables that point the tests at the shared database servers.
const (
	envPostgresURL = "PHAROX_TEST_POSTGRES_URL"
	envRedisURL    = "PHAROX_TEST_REDIS_URL"
)

// backendPGMaxConns caps each store's connection pool: the PostgreSQL
// server's max_connections is shared with every other test on the machine.
const backendPGMaxConns = "4"

// TestContractSQLite runs the HTTP contract over SQLite, one file per store.
func TestContractSQLite(t *testing.T) {
	servertest.Run(t, func(t *testing.T) pharox.Storage {
		path := filepath.Join(t.TempDir(), "pharox.db")
		s, err := open.Open(backendOpenContext(t), "sqlite://"+path)
		if err != nil {
			t.Fatalf("open sqlite %s: %v", path, err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

// TestContractPostgres runs the HTTP contract over PostgreSQL, each store in
// its own schema, dropped afterwards.
func TestContractPostgres(t *testing.T) {
	base := backendPostgresURL(t)
	admin := backendPGAdmin(t, base)
	servertest.Run(t, func(t *testing.T) pharox.Storage {
		return backendOpenPostgres(t, admin, base, backendNamespace("pharox_srvtest_"))
	})
}

// TestContractRedis runs the HTTP contract over Redis, each store under its
// own key prefix, deleted afterwards.
func TestContractRedis(t *testing.T) {
	base := backendRedisURL(t)
	admin := backendRedisAdmin(t, base)
	servertest.Run(t, func(t *testing.T) pharox.Storage {
		return backendOpenRedis(t, admin, base, "{"+backendNamespace("pharox-srvtest-")+"}:")
	})
}

// backendOpenContext bounds opening a store. It is not t.Context(): a
// store must outlive the test body, since cleanups run after that context
// ends.
func backendOpenContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// backendPostgresURL returns PHAROX_TEST_POSTGRES_URL or skips the test.
func backendPostgresURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(envPostgresURL)
	if u == "" {
		t.Skipf("%s is not set: skipping PostgreSQL server tests (e.g. %s=postgres://postgres@127.0.0.1:5432/test?sslmode=disable)",
			envPostgresURL, envPostgresURL)
	}
	return u
}

// backendRedisURL returns PHAROX_TEST_REDIS_URL or skips the test.
func backendRedisURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(envRedisURL)
	if u == "" {
		t.Skipf("%s is not set: skipping Redis server tests (e.g. %s=redis://127.0.0.1:6379/0)", envRedisURL, envRedisURL)
	}
	return u
}

// backendNamespace returns prefix followed by 12 random hex digits.
func backendNamespace(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return prefix + hex.EncodeToString(b[:])
}

// backendWithParams returns raw with the query parameters set (replacing any
// of the same name).
func backendWithParams(t testing.TB, raw string, kv ...string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("storage URL %s: %v", open.Redact(raw), err)
	}
	q := u.Query()
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// backendPGStoreURL is the URL of a store in schema, with a small pool.
func backendPGStoreURL(t testing.TB, base, schema string) string {
	return backendWithParams(t, base, "schema", schema, "pool_max_conns", backendPGMaxConns)
}

// backendPGAdmin returns a small pool, closed when t ends, for dropping
// schemas.
func backendPGAdmin(t testing.TB, base string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(backendOpenContext(t), backendWithParams(t, base, "pool_max_conns", "2"))
	if err != nil {
		t.Fatalf("connect to %s: %v", envPostgresURL, err)
	}
	// Registered first, so it runs after every schema has been dropped.
	t.Cleanup(pool.Close)
	return pool
}

// backendDropSchema drops schema and everything in it.
func backendDropSchema(t testing.TB, admin *pgxpool.Pool, schema string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Schema names come from backendNamespace: lower-case hex, no quoting
	// issues, but quote anyway.
	if _, err := admin.Exec(ctx, `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`); err != nil {
		t.Errorf("drop schema %s: %v", schema, err)
	}
}

// backendOpenPostgres opens (and migrates) a store in schema through
// open.Open; the store is closed and the schema dropped when t ends.
func backendOpenPostgres(t testing.TB, admin *pgxpool.Pool, base, schema string) pharox.Storage {
	t.Helper()
	// Registered before the store's Close, so it runs after it.
	t.Cleanup(func() { backendDropSchema(t, admin, schema) })
	s, err := open.Open(backendOpenContext(t), backendPGStoreURL(t, base, schema))
	if err != nil {
		t.Fatalf("open postgres schema %s: %v", schema, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// backendRedisAdmin returns a client, closed when t ends, for deleting keys.
func backendRedisAdmin(t testing.TB, base string) *goredis.Client {
	t.Helper()
	opt, err := goredis.ParseURL(base)
	if err != nil {
		t.Fatalf("%s: %v", envRedisURL, err)
	}
	c := goredis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// backendRedisStoreURL is the URL of a store under prefix.
func backendRedisStoreURL(t testing.TB, base, prefix string) string {
	return backendWithParams(t, base, "prefix", prefix)
}

// backendOpenRedis opens a store under prefix through open.Open; its keys
// are deleted when t ends.
func backendOpenRedis(t testing.TB, admin *goredis.Client, base, prefix string) pharox.Storage {
	t.Helper()
	t.Cleanup(func() { redistest.DeletePrefix(t, admin, prefix) })
	s, err := open.Open(backendOpenContext(t), backendRedisStoreURL(t, base, prefix))
	if err != nil {
		t.Fatalf("open redis prefix %s: %v", prefix, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
