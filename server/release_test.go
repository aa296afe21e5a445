package server_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server"
)

// leaseReadCounter counts the store's lease reads.
type leaseReadCounter struct {
	pharox.Storage
	reads atomic.Int64
}

func (s *leaseReadCounter) GetLease(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	s.reads.Add(1)
	return s.Storage.GetLease(ctx, id)
}

// TestReleaseOfALiveLeaseIsOneRoundTrip checks that releasing a lease this
// server handed out, well before its expiry, does not read the lease
// before releasing it; and that releasing it again still answers it as it
// ended.
func TestReleaseOfALiveLeaseIsOneRoundTrip(t *testing.T) {
	ctx := context.Background()
	mem := testfactory.Memory(t)
	t.Cleanup(func() { _ = mem.Close() })
	store := &leaseReadCounter{Storage: mem}
	pool, err := pharox.BootstrapPool(ctx, store, "main", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: "127.0.0.1", Port: 3128, Protocol: pharox.ProtocolHTTP}); err != nil {
		t.Fatal(err)
	}
	srv := server.New(pharox.NewManager(store), server.Options{DisableAuth: true, Logger: slog.New(slog.DiscardHandler), ReapInterval: -1})
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)

	post := func(path, body string, want int) map[string]any {
		t.Helper()
		resp, err := http.Post(hs.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != want {
			t.Fatalf("POST %s: %d %v, want %d", path, resp.StatusCode, out, want)
		}
		return out
	}
	lease := post("/v1/leases/", `{"pool_name":"main","ttl_seconds":300}`, http.StatusCreated)
	id, _ := lease["id"].(string)
	before := store.reads.Load()
	if got := post("/v1/leases/"+id+"/release", "", http.StatusOK); got["status"] != "released" {
		t.Fatalf("release answered %v, want it released", got)
	}
	if n := store.reads.Load() - before; n != 0 {
		t.Fatalf("releasing a live lease read it %d times first; want the release alone", n)
	}
	if got := post("/v1/leases/"+id+"/release", "", http.StatusOK); got["status"] != "released" || got["id"] != id {
		t.Fatalf("second release answered %v, want the lease as it ended", got)
	}
}
