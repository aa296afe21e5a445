package server_test

import (
	"path/filepath"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/open"
)

// Two handles on one store, as two serve processes sharing it have: keys
// created, rotated or revoked through one server apply on the other within
// seconds, and scopes hold across them.

// backendSecondHandle opens another handle on the store at url, closed
// when t ends.
func backendSecondHandle(t *testing.T, url string) pharox.Storage {
	t.Helper()
	s, err := open.Open(backendOpenContext(t), url)
	if err != nil {
		t.Fatalf("open a second handle on %s: %v", open.Redact(url), err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestSharedStoreMemory(t *testing.T) {
	servertest.RunSharedStore(t, func(t *testing.T) (pharox.Storage, pharox.Storage) {
		s := testfactory.Memory(t)
		t.Cleanup(func() { _ = s.Close() })
		return s, s
	})
}

func TestSharedStoreSQLite(t *testing.T) {
	servertest.RunSharedStore(t, func(t *testing.T) (pharox.Storage, pharox.Storage) {
		url := "sqlite://" + filepath.Join(t.TempDir(), "pharox.db")
		return backendSecondHandle(t, url), backendSecondHandle(t, url)
	})
}

func TestSharedStorePostgres(t *testing.T) {
	base := backendPostgresURL(t)
	admin := backendPGAdmin(t, base)
	servertest.RunSharedStore(t, func(t *testing.T) (pharox.Storage, pharox.Storage) {
		schema := backendNamespace("pharox_srvshared_")
		a := backendOpenPostgres(t, admin, base, schema)
		return a, backendSecondHandle(t, backendPGStoreURL(t, base, schema))
	})
}

func TestSharedStoreRedis(t *testing.T) {
	base := backendRedisURL(t)
	admin := backendRedisAdmin(t, base)
	servertest.RunSharedStore(t, func(t *testing.T) (pharox.Storage, pharox.Storage) {
		prefix := "{" + backendNamespace("pharox-srvshared-") + "}:"
		a := backendOpenRedis(t, admin, base, prefix)
		return a, backendSecondHandle(t, backendRedisStoreURL(t, base, prefix))
	})
}

func TestSharedStoreMySQL(t *testing.T) {
	base := backendMySQLURL(t)
	admin := backendMySQLAdmin(t, base)
	servertest.RunSharedStore(t, func(t *testing.T) (pharox.Storage, pharox.Storage) {
		prefix := backendNamespace("pxsh_") + "_"
		a := backendOpenMySQL(t, admin, base, prefix)
		return a, backendSecondHandle(t, backendWithParams(t, base, "prefix", prefix))
	})
}
