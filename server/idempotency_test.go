package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/open"
)

// TestIdempotencyKey checks POST /v1/leases/ with an Idempotency-Key over
// every store: the same key by the same consumer returns the same lease
// and takes no second slot, even after the lease ended; another consumer's
// same key is another acquisition; a key reused for another pool and a
// malformed key are refused with a sentence naming the header.
func TestIdempotencyKey(t *testing.T) {
	stores := map[string]func(t *testing.T) pharox.Storage{
		"memory": func(t *testing.T) pharox.Storage { return testfactory.Memory(t) },
		"sqlite": func(t *testing.T) pharox.Storage {
			s, err := open.Open(backendOpenContext(t), "sqlite://"+filepath.Join(t.TempDir(), "pharox.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			return s
		},
		"postgres": func(t *testing.T) pharox.Storage {
			base := backendPostgresURL(t)
			return backendOpenPostgres(t, backendPGAdmin(t, base), base, backendNamespace("pharox_idem_"))
		},
		"redis": func(t *testing.T) pharox.Storage {
			base := backendRedisURL(t)
			return backendOpenRedis(t, backendRedisAdmin(t, base), base, "{"+backendNamespace("pharox-idem-")+"}:")
		},
	}
	for name, newStore := range stores {
		t.Run(name, func(t *testing.T) { testIdempotencyKey(t, newStore(t)) })
	}
}

func testIdempotencyKey(t *testing.T, store pharox.Storage) {
	e := servertest.NewEnv(t, store, nil)
	one := 1
	pool := e.CreatePool("idem")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.79.0.1", Port: 3128, Protocol: "http", MaxConcurrency: &one})
	other := e.CreatePool("idem-other")
	e.AddProxy(other, api.CreateProxyRequest{Host: "10.79.0.2", Port: 3128, Protocol: "http", MaxConcurrency: &one})

	// Malformed keys are refused whatever the store.
	for _, bad := range []string{strings.Repeat("k", 256), "two words", "caf\u00e9"} {
		status, body := idemAcquire(t, e, pool.ID.String(), "alice", bad)
		if status != http.StatusUnprocessableEntity || !strings.Contains(body, "Idempotency-Key") {
			t.Errorf("key %.20q: %d %s, want 422 naming the header", bad, status, body)
		}
	}

	status, body := idemAcquire(t, e, pool.ID.String(), "alice", "order-17")
	if status != http.StatusCreated {
		t.Fatalf("first acquisition: %d %s", status, body)
	}
	first := idemLease(t, body)
	// The answer was lost; the client repeats the request. The only
	// proxy is held, so a second acquisition would answer 409.
	status, body = idemAcquire(t, e, pool.ID.String(), "alice", "order-17")
	if status != http.StatusCreated || idemLease(t, body).ID != first.ID {
		t.Fatalf("repeated acquisition: %d %s, want 201 with lease %s", status, body, first.ID)
	}
	// Another consumer's key of the same text is its own acquisition.
	if status, body = idemAcquire(t, e, pool.ID.String(), "bob", "order-17"); status != http.StatusConflict {
		t.Fatalf("bob's order-17 while alice holds the proxy: %d %s, want 409", status, body)
	}
	// The key names alice's lease in pool idem: not one in another pool.
	if status, body = idemAcquire(t, e, other.ID.String(), "alice", "order-17"); status != http.StatusUnprocessableEntity ||
		!strings.Contains(body, "Idempotency-Key") {
		t.Fatalf("order-17 for another pool: %d %s, want 422 naming the header", status, body)
	}
	e.Consumer("POST", "/v1/leases/"+first.ID.String()+"/release", nil).Expect(t, 200)
	// Repeated after the release: the same lease, ended, not a new one.
	status, body = idemAcquire(t, e, pool.ID.String(), "alice", "order-17")
	if got := idemLease(t, body); status != http.StatusCreated || got.ID != first.ID || got.Status != string(pharox.LeaseReleased) {
		t.Fatalf("repeated after release: %d %s, want lease %s released", status, body, first.ID)
	}
	leases, err := store.ListLeases(context.Background(), pharox.LeaseQuery{PoolID: pool.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 1 {
		t.Fatalf("the pool has %d leases after one acquisition repeated twice, want 1", len(leases))
	}
	// A new key is a new acquisition.
	if status, body = idemAcquire(t, e, pool.ID.String(), "alice", "order-18"); status != http.StatusCreated || idemLease(t, body).ID == first.ID {
		t.Fatalf("new key: %d %s, want a new lease", status, body)
	}
}

// idemAcquire posts an acquisition from pool as consumer with key.
func idemAcquire(t *testing.T, e *servertest.Env, pool, consumer, key string) (int, string) {
	t.Helper()
	raw, _ := json.Marshal(api.AcquireRequest{PoolID: pool, ConsumerName: consumer})
	req, err := http.NewRequest("POST", e.URL+"/v1/leases/", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(server.APIKeyHeader, servertest.ConsumerKey)
	req.Header.Set(server.IdempotencyKeyHeader, key)
	resp, err := e.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func idemLease(t *testing.T, body string) api.Lease {
	t.Helper()
	var l api.Lease
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatalf("decode lease %s: %v", body, err)
	}
	return l
}

// The OpenAPI document names the Idempotency-Key header of an
// acquisition, so clients generated from it can send one.
func TestOpenAPIDocumentsIdempotencyKey(t *testing.T) {
	srv := server.New(pharox.NewManager(testfactory.Memory(t)), server.Options{DisableAuth: true})
	var doc struct {
		Paths map[string]map[string]struct {
			Parameters []struct{ Name, In string } `json:"parameters"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(srv.OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, p := range doc.Paths["/v1/leases/"]["post"].Parameters {
		if p.Name == server.IdempotencyKeyHeader && p.In == "header" {
			return
		}
	}
	t.Fatalf("POST /v1/leases/ parameters %+v: no Idempotency-Key header", doc.Paths["/v1/leases/"]["post"].Parameters)
}
