package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/memory"
)

// brokenStore is a real memory store whose ListPools and Ping fail, as a
// database that went away would.
type brokenStore struct{ *memory.Store }

var errBroken = errors.New("connection to db-7 lost (password=letmein)")

func (b brokenStore) ListPools(context.Context) ([]*pharox.Pool, error) { return nil, errBroken }
func (b brokenStore) Ping(context.Context) error                        { return errBroken }

func (b brokenStore) GetPoolStats(context.Context, string) (*pharox.PoolStats, error) {
	panic("stats exploded")
}

// TestInternalErrorsAreGeneric checks that a store failure answers 500 with
// a generic detail, is logged, and that /readyz reports it as 503.
func TestInternalErrorsAreGeneric(t *testing.T) {
	e := servertest.NewEnv(t, brokenStore{testfactory.Memory(t)}, nil)
	r := e.Admin("GET", "/v1/pools/", nil).Expect(t, 500)
	if r.Detail() != "Internal server error" || strings.Contains(string(r.Body), "letmein") {
		t.Fatalf("500 body leaks the cause: %s", r.Body)
	}
	if !strings.Contains(e.Logs.String(), "db-7 lost") {
		t.Fatalf("the cause is not logged:\n%s", e.Logs.String())
	}
	if r := e.Do("GET", "/readyz", "", nil).Expect(t, 503); r.Detail() != "Storage unavailable" || r.Header.Get("Retry-After") == "" {
		t.Fatalf("readyz detail %q, Retry-After %q", r.Detail(), r.Header.Get("Retry-After"))
	}
	// A panicking handler answers 500 and the server goes on serving.
	pool := e.CreatePool("main")
	if r := e.Admin("GET", "/v1/pools/"+pool.ID.String()+"/stats", nil).Expect(t, 500); r.Detail() != "Internal server error" {
		t.Fatalf("panic answer %s", r.Body)
	}
	if !strings.Contains(e.Logs.String(), "stats exploded") {
		t.Fatal("the panic is not logged")
	}
	e.Admin("GET", "/v1/pools/"+pool.ID.String(), nil).Expect(t, 200)
}
