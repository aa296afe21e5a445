package client

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// keyRecorder remembers the Idempotency-Key of every acquisition.
type keyRecorder struct {
	mu   sync.Mutex
	keys []string
}

func (k *keyRecorder) add(r *http.Request) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	key := r.Header.Get(IdempotencyKeyHeader)
	k.keys = append(k.keys, key)
	return key
}

func (k *keyRecorder) all() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.keys...)
}

// TestAcquireRetriedWithHonouredKey checks that an acquisition answered
// 503 by a server that repeats its Idempotency-Key (so honours it) is
// retried after Retry-After with the same key, and so is one whose answer
// was lost once the server has shown it honours keys.
func TestAcquireRetriedWithHonouredKey(t *testing.T) {
	var rec keyRecorder
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		key := rec.add(r)
		switch hit {
		case 1:
			w.Header().Set(IdempotencyKeyHeader, key)
			w.Header().Set("Retry-After", "1")
			detail(w, http.StatusServiceUnavailable, "Storage unavailable: the store is restarting; retry later")
		case 3:
			hangUp(t, w) // second call, first attempt: the answer is lost
		default:
			w.Header().Set(IdempotencyKeyHeader, key)
			writeJSON(w, http.StatusCreated, wireLease("active"))
		}
	})
	c := f.client(t)
	if _, err := c.Acquire(context.Background(), api.AcquireRequest{PoolName: "main"}); err != nil {
		t.Fatalf("acquire across one 503: %v", err)
	}
	if _, err := c.Acquire(context.Background(), api.AcquireRequest{PoolName: "main"}); err != nil {
		t.Fatalf("acquire across one lost answer: %v", err)
	}
	keys := rec.all()
	if len(keys) != 4 || keys[0] == "" || keys[0] != keys[1] || keys[2] != keys[3] || keys[0] == keys[2] {
		t.Fatalf("keys sent %q: want one key per call, the same on its retry", keys)
	}
}

// TestAcquireWithKeySendsTheKey checks that the caller's key is sent and
// that an empty one is refused before any request.
func TestAcquireWithKeySendsTheKey(t *testing.T) {
	var rec keyRecorder
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		rec.add(r)
		writeJSON(w, http.StatusCreated, wireLease("active"))
	})
	c := f.client(t)
	if _, err := c.AcquireWithKey(context.Background(), "job-42", api.AcquireRequest{PoolName: "main"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AcquireWithKey(context.Background(), "", api.AcquireRequest{PoolName: "main"}); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("empty key: %v, want ErrInvalidArgument", err)
	}
	if keys := rec.all(); len(keys) != 1 || keys[0] != "job-42" {
		t.Fatalf("keys sent %q, want [job-42]", keys)
	}
}

// TestUnavailableIsErrUnavailable checks that a 503 that outlasts the
// retries is an error wrapping pharox.ErrUnavailable.
func TestUnavailableIsErrUnavailable(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		detail(w, http.StatusServiceUnavailable, "Storage unavailable: the store is unreachable; retry later")
	})
	_, err := f.client(t).ListPools(context.Background())
	if !errors.Is(err, pharox.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if n := f.count("GET", "/v1/pools/"); n != 4 {
		t.Errorf("a read answered 503 was sent %d times, want 4 (1 + 3 retries)", n)
	}
}
