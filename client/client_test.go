package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// fake is a scripted stand-in for the service, for behaviour that depends
// on the client alone: retries, error mapping, releases.
type fake struct {
	t    *testing.T
	srv  *httptest.Server
	mu   sync.Mutex
	hits map[string]int // "METHOD path" -> requests seen
	keys []string       // X-API-Key of every request
	// handle answers a request; the hit count includes this request.
	handle func(w http.ResponseWriter, r *http.Request, hit int)
}

func newFake(t *testing.T, handle func(w http.ResponseWriter, r *http.Request, hit int)) *fake {
	f := &fake{t: t, hits: map[string]int{}, handle: handle}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		k := r.Method + " " + r.URL.Path
		f.hits[k]++
		hit := f.hits[k]
		f.keys = append(f.keys, r.Header.Get(APIKeyHeader))
		f.mu.Unlock()
		f.handle(w, r, hit)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fake) count(method, path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[method+" "+path]
}

func (f *fake) client(t *testing.T, opts ...Option) *Client {
	t.Helper()
	// Tiny backoff: the tests count attempts, they do not time them.
	c, err := New(f.srv.URL, append([]Option{WithRetry(3, time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func detail(w http.ResponseWriter, status int, d string) {
	writeJSON(w, status, api.Error{Detail: d})
}

// hangUp closes the connection without an answer, after the request was
// read: the server may have acted.
func hangUp(t *testing.T, w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	conn.Close()
}

var (
	poolID  = uuid.MustParse("11111111-1111-1111-1111-111111111111")
	proxyID = uuid.MustParse("22222222-2222-2222-2222-222222222222")
	leaseID = uuid.MustParse("33333333-3333-3333-3333-333333333333")
)

func wireLease(status string) api.Lease {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return api.Lease{
		ID: leaseID, ProxyID: proxyID, PoolID: poolID, PoolName: "main", ConsumerID: uuid.New(), ConsumerName: "default",
		Status: status, AcquiredAt: api.NewTime(now), ExpiresAt: api.NewTime(now.Add(5 * time.Minute)),
		Proxy: &api.Proxy{ID: proxyID, PoolID: poolID, Host: "10.0.0.1", Port: 8080, Protocol: "http",
			Username: "alice", Password: "s3cret", Status: "active", CurrentLeases: 1},
	}
}

func TestNewRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"", "localhost:8080", "ftp://x", "http://", "http://user:hunter2@host"} {
		_, err := New(u)
		if err == nil {
			t.Errorf("New(%q) succeeded", u)
		} else if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("New(%q) error leaks the password: %v", u, err)
		}
	}
	if _, err := New("http://h", WithAPIKey("a\nb")); err == nil {
		t.Error("API key with a line break accepted")
	}
	if _, err := New("http://h", WithRetry(-1, 0)); err == nil {
		t.Error("negative retries accepted")
	}
}

func TestErrorMapping(t *testing.T) {
	cases := []struct {
		name     string
		status   int
		body     string
		call     func(c *Client) error
		sentinel error
	}{
		{"no proxy", 409, `{"detail":"No proxy available"}`, func(c *Client) error {
			_, err := c.Acquire(context.Background(), api.AcquireRequest{PoolName: "main"})
			return err
		}, pharox.ErrNoProxyAvailable},
		{"pool 404 by detail", 404, `{"detail":"Pool not found"}`, func(c *Client) error {
			_, err := c.Acquire(context.Background(), api.AcquireRequest{PoolName: "x"})
			return err
		}, pharox.ErrPoolNotFound},
		{"consumer 404 by detail on acquire", 404, `{"detail":"Consumer not found"}`, func(c *Client) error {
			_, err := c.Acquire(context.Background(), api.AcquireRequest{PoolName: "x", ConsumerID: uuid.NewString()})
			return err
		}, pharox.ErrConsumerNotFound},
		{"lease 404 by route", 404, `{"detail":"Not Found"}`, func(c *Client) error {
			_, err := c.GetLease(context.Background(), leaseID)
			return err
		}, pharox.ErrLeaseNotFound},
		{"proxy 404 by route", 404, `not json`, func(c *Client) error {
			return c.DeleteProxy(context.Background(), poolID, proxyID)
		}, pharox.ErrProxyNotFound},
		{"already exists", 409, `{"detail":"create pool: pharox: already exists"}`, func(c *Client) error {
			_, err := c.CreatePool(context.Background(), "main", "")
			return err
		}, pharox.ErrAlreadyExists},
		{"in use", 409, `{"detail":"pharox: in use by active leases"}`, func(c *Client) error {
			return c.DeletePool(context.Background(), poolID)
		}, pharox.ErrInUse},
		{"not active", 409, `{"detail":"renew lease x: pharox: lease is not active"}`, func(c *Client) error {
			_, err := c.Renew(context.Background(), leaseID, time.Minute)
			return err
		}, pharox.ErrLeaseNotActive},
		{"invalid", 422, `{"detail":[{"loc":["body","ttl_seconds"],"msg":"must be positive"}]}`, func(c *Client) error {
			_, err := c.Renew(context.Background(), leaseID, time.Second)
			return err
		}, pharox.ErrInvalidArgument},
		{"unsupported", 501, `{"detail":"no health checker configured"}`, func(c *Client) error {
			_, err := c.Sweep(context.Background(), poolID, api.SweepRequest{})
			return err
		}, pharox.ErrUnsupported},
		{"unauthorized", 401, `{"detail":"Missing API key"}`, func(c *Client) error {
			_, err := c.ListPools(context.Background())
			return err
		}, ErrUnauthorized},
		{"forbidden", 403, `{"detail":"Admin key required"}`, func(c *Client) error {
			_, err := c.ListLeases(context.Background(), pharox.LeaseQuery{})
			return err
		}, ErrForbidden},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			})
			err := tc.call(f.client(t))
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("err = %v, want it to wrap %v", err, tc.sentinel)
			}
			var ae *APIError
			if !errors.As(err, &ae) || ae.StatusCode != tc.status {
				t.Fatalf("err = %v, want an *APIError with status %d", err, tc.status)
			}
			if ae.Detail == "" {
				t.Errorf("APIError has no detail")
			}
			// 4xx and 501 are never retried.
			total := 0
			for _, n := range f.hits {
				total += n
			}
			if total != 1 {
				t.Errorf("%d requests, want 1 (no retry)", total)
			}
		})
	}
}

func TestConflictWithoutKnownDetailIsOnlyAPIError(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) { detail(w, 409, "something else") })
	_, err := f.client(t).CreatePool(context.Background(), "p", "")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Detail != "something else" {
		t.Fatalf("err = %v", err)
	}
	for _, s := range []error{pharox.ErrNoProxyAvailable, pharox.ErrAlreadyExists, pharox.ErrInUse, pharox.ErrLeaseNotActive} {
		if errors.Is(err, s) {
			t.Errorf("err wraps %v", s)
		}
	}
}

func TestRetriesIdempotentOnTransientErrors(t *testing.T) {
	for _, status := range []int{502, 503, 504, 429} {
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
			if hit < 3 {
				detail(w, status, "try later")
				return
			}
			writeJSON(w, 200, []api.Pool{{ID: poolID, Name: "main"}})
		})
		pools, err := f.client(t).ListPools(context.Background())
		if err != nil || len(pools) != 1 || pools[0].Name != "main" {
			t.Fatalf("status %d: ListPools = %v, %v", status, pools, err)
		}
		if n := f.count("GET", "/v1/pools/"); n != 3 {
			t.Errorf("status %d: %d requests, want 3", status, n)
		}
	}
}

func TestRetriesGiveUpAfterMax(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) { detail(w, 503, "down") })
	_, err := f.client(t).GetPool(context.Background(), poolID)
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 {
		t.Fatalf("err = %v, want the 503", err)
	}
	if n := f.count("GET", "/v1/pools/"+poolID.String()); n != 4 {
		t.Errorf("%d requests, want 1 + 3 retries", n)
	}
	f2 := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) { detail(w, 503, "down") })
	c, _ := New(f2.srv.URL, WithRetry(0, 0))
	c.GetPool(context.Background(), poolID)
	if n := f2.count("GET", "/v1/pools/"+poolID.String()); n != 1 {
		t.Errorf("WithRetry(0): %d requests, want 1", n)
	}
}

func TestAcquireNotRetriedWhenServerMayHaveActed(t *testing.T) {
	for _, status := range []int{502, 503, 504} {
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) { detail(w, status, "gateway trouble") })
		_, err := f.client(t).Acquire(context.Background(), api.AcquireRequest{PoolName: "main"})
		if err == nil {
			t.Fatalf("status %d: acquire succeeded", status)
		}
		if n := f.count("POST", "/v1/leases/"); n != 1 {
			t.Errorf("status %d: acquire sent %d times, want 1", status, n)
		}
	}
	// The connection drops after the server read the request.
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) { hangUp(t, w) })
	_, err := f.client(t).Acquire(context.Background(), api.AcquireRequest{PoolName: "main"})
	var te *TransportError
	if !errors.As(err, &te) || !te.Sent {
		t.Fatalf("err = %#v, want a TransportError with Sent", err)
	}
	if n := f.count("POST", "/v1/leases/"); n != 1 {
		t.Errorf("acquire sent %d times after a dropped connection, want 1", n)
	}
	// The same failure on a read is retried.
	f = newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		if hit == 1 {
			hangUp(t, w)
			return
		}
		writeJSON(w, 200, wireLease("active"))
	})
	if _, err := f.client(t).GetLease(context.Background(), leaseID); err != nil {
		t.Fatalf("GetLease after one dropped connection: %v", err)
	}
}

func TestAcquireRetriedWhenRateLimited(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		if hit == 1 {
			detail(w, 429, "slow down")
			return
		}
		writeJSON(w, 201, wireLease("active"))
	})
	l, err := f.client(t).Acquire(context.Background(), api.AcquireRequest{PoolName: "main"})
	if err != nil || l.ID != leaseID {
		t.Fatalf("Acquire = %v, %v", l, err)
	}
	if n := f.count("POST", "/v1/leases/"); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
}

// failingDialer refuses the first n dials, then connects for real.
type failingDialer struct {
	fails atomic.Int32
	dials atomic.Int32
}

func (d *failingDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.dials.Add(1)
	if d.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("connection refused (simulated)")}
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func TestAcquireRetriedOnDialError(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) { writeJSON(w, 201, wireLease("active")) })
	d := &failingDialer{}
	d.fails.Store(2)
	hc := &http.Client{Transport: &http.Transport{DialContext: d.dial}}
	c := f.client(t, WithHTTPClient(hc))
	l, err := c.Acquire(context.Background(), api.AcquireRequest{PoolName: "main"})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if d.dials.Load() != 3 || f.count("POST", "/v1/leases/") != 1 {
		t.Errorf("dials %d, server requests %d; want 3 and 1", d.dials.Load(), f.count("POST", "/v1/leases/"))
	}
	// The lease carries the proxy's credentials, usable at once.
	if got := l.Proxy.URL(); got != "http://alice:s3cret@10.0.0.1:8080" {
		t.Errorf("lease proxy URL = %q", got)
	}
	// A refused connection to a closed port is a dial error too.
	closed := httptest.NewServer(http.NotFoundHandler())
	addr := closed.URL
	closed.Close()
	c2, _ := New(addr, WithRetry(2, time.Millisecond))
	_, err = c2.Acquire(context.Background(), api.AcquireRequest{PoolName: "main"})
	var te *TransportError
	if !errors.As(err, &te) || te.Sent {
		t.Fatalf("err = %v, want an unsent TransportError", err)
	}
}

func TestDeadlineStopsRetries(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) { detail(w, 503, "down") })
	c := f.client(t, WithRetry(5, time.Hour))
	// Backoffs are capped at MaxBackoff and jittered down to half of it.
	ctx, cancel := context.WithTimeout(context.Background(), MaxBackoff/2-time.Second)
	defer cancel()
	_, err := c.ListPools(ctx)
	// The backoff is longer than the deadline: the client gives up at once
	// with the real error instead of sleeping into the deadline.
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 503 {
		t.Fatalf("err = %v, want the 503", err)
	}
	if n := f.count("GET", "/v1/pools/"); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
	// A cancelled context is not retried either.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	_, err = c.ListPools(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestReleaseRetryAfterServerActed(t *testing.T) {
	var released atomic.Bool
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		switch {
		case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/release"):
			if released.Swap(true) {
				detail(w, 409, "pharox: lease is not active")
				return
			}
			detail(w, 502, "bad gateway") // released, but the answer was lost
		case r.Method == "GET":
			l := wireLease("released")
			now := api.NewTime(time.Now())
			l.ReleasedAt = &now
			l.Proxy = nil
			writeJSON(w, 200, l)
		default:
			detail(w, 404, "Not Found")
		}
	})
	l, err := f.client(t).Release(context.Background(), leaseID)
	if err != nil || l.Status != pharox.LeaseReleased {
		t.Fatalf("Release = %v, %v; want the released lease", l, err)
	}
}

// A server from before releases were idempotent answers 409 for an ended
// lease; the client answers as current servers do, with the ended lease.
func TestReleaseEndedOnOlderServer(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		switch r.Method {
		case "POST":
			detail(w, 409, "pharox: lease is not active")
		case "GET":
			writeJSON(w, 200, wireLease("expired"))
		}
	})
	l, err := f.client(t).Release(context.Background(), leaseID)
	if err != nil || l.Status != pharox.LeaseExpired {
		t.Fatalf("Release = %v, %v; want the expired lease", l, err)
	}
	// If the lease cannot be read, the 409 stands.
	f2 := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) { detail(w, 409, "pharox: lease is not active") })
	if _, err := f2.client(t).Release(context.Background(), leaseID); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Fatalf("err = %v, want ErrLeaseNotActive", err)
	}
}

func TestAPIKeyAndUserAgent(t *testing.T) {
	var ua atomic.Value
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		ua.Store(r.Header.Get("User-Agent"))
		writeJSON(w, 200, []api.Pool{})
	})
	c := f.client(t, WithAPIKey("k-123"), WithUserAgent("tests/1"))
	if _, err := c.ListPools(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.keys[0] != "k-123" || ua.Load() != "tests/1" {
		t.Errorf("key %q, user agent %q", f.keys[0], ua.Load())
	}
}

func TestAPIKeyNotForwardedToOtherHosts(t *testing.T) {
	var otherKey atomic.Value
	otherKey.Store("unset")
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		otherKey.Store(r.Header.Get(APIKeyHeader))
		writeJSON(w, 200, []api.Pool{})
	}))
	defer other.Close()
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		// 127.0.0.1 and localhost are different hosts to the client.
		http.Redirect(w, r, strings.Replace(other.URL, "127.0.0.1", "localhost", 1)+"/v1/pools/", http.StatusTemporaryRedirect)
	})
	if _, err := f.client(t, WithAPIKey("k-secret")).ListPools(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := otherKey.Load(); got != "" {
		t.Errorf("other host received X-API-Key %q", got)
	}
}

// leaseServer answers acquire and release and records releases.
func leaseServer(t *testing.T, releaseStatus int) (*fake, *atomic.Int32) {
	var releases atomic.Int32
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		switch {
		case r.URL.Path == "/v1/leases/":
			writeJSON(w, 201, wireLease("active"))
		case strings.HasSuffix(r.URL.Path, "/release"):
			// The release must arrive even if the caller's context ended.
			releases.Add(1)
			if releaseStatus != 200 {
				detail(w, releaseStatus, "Lease not found")
				return
			}
			writeJSON(w, 200, wireLease("released"))
		}
	})
	return f, &releases
}

func TestWithLeaseReleases(t *testing.T) {
	req := api.AcquireRequest{PoolName: "main"}
	t.Run("success", func(t *testing.T) {
		f, releases := leaseServer(t, 200)
		var seen uuid.UUID
		err := f.client(t).WithLease(context.Background(), req, func(ctx context.Context, l *pharox.Lease) error {
			seen = l.ID
			return nil
		})
		if err != nil || seen != leaseID || releases.Load() != 1 {
			t.Fatalf("err %v, lease %v, releases %d", err, seen, releases.Load())
		}
	})
	t.Run("fn error", func(t *testing.T) {
		f, releases := leaseServer(t, 200)
		boom := errors.New("boom")
		err := f.client(t).WithLease(context.Background(), req, func(context.Context, *pharox.Lease) error { return boom })
		if !errors.Is(err, boom) || releases.Load() != 1 {
			t.Fatalf("err %v, releases %d", err, releases.Load())
		}
	})
	t.Run("panic", func(t *testing.T) {
		f, releases := leaseServer(t, 200)
		c := f.client(t)
		func() {
			defer func() {
				if p := recover(); p != "kaboom" {
					t.Errorf("recovered %v, want the original panic", p)
				}
			}()
			c.WithLease(context.Background(), req, func(context.Context, *pharox.Lease) error { panic("kaboom") })
		}()
		if releases.Load() != 1 {
			t.Fatalf("releases %d after panic", releases.Load())
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		f, releases := leaseServer(t, 200)
		ctx, cancel := context.WithCancel(context.Background())
		err := f.client(t).WithLease(ctx, req, func(ctx context.Context, l *pharox.Lease) error {
			cancel()
			return ctx.Err()
		})
		if !errors.Is(err, context.Canceled) || releases.Load() != 1 {
			t.Fatalf("err %v, releases %d", err, releases.Load())
		}
	})
	t.Run("release failure joined", func(t *testing.T) {
		f, releases := leaseServer(t, 404)
		err := f.client(t).WithLease(context.Background(), req, func(context.Context, *pharox.Lease) error { return nil })
		if !errors.Is(err, pharox.ErrLeaseNotFound) || releases.Load() != 1 {
			t.Fatalf("err %v, releases %d", err, releases.Load())
		}
	})
	t.Run("acquire miss runs nothing", func(t *testing.T) {
		f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) { detail(w, 409, "No proxy available") })
		ran := false
		err := f.client(t).WithLease(context.Background(), req, func(context.Context, *pharox.Lease) error { ran = true; return nil })
		if !errors.Is(err, pharox.ErrNoProxyAvailable) || ran || f.count("POST", "/v1/leases/") != 1 {
			t.Fatalf("err %v, ran %v", err, ran)
		}
	})
}

func TestRequestShapes(t *testing.T) {
	var mu sync.Mutex
	bodies := map[string]map[string]any{}
	queries := map[string]string{}
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) {
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		bodies[r.Method+" "+r.URL.Path] = body
		queries[r.Method+" "+r.URL.Path] = r.URL.RawQuery
		mu.Unlock()
		switch {
		case r.URL.Path == "/v1/leases/" && r.Method == "POST":
			writeJSON(w, 201, wireLease("active"))
		case r.URL.Path == "/v1/leases/":
			writeJSON(w, 200, []api.Lease{})
		case strings.HasSuffix(r.URL.Path, "/outcome"):
			writeJSON(w, 200, api.Proxy{ID: proxyID, Status: "active"})
		case strings.HasSuffix(r.URL.Path, "/renew"):
			writeJSON(w, 200, wireLease("active"))
		default:
			writeJSON(w, 200, api.Proxy{ID: proxyID, Status: "banned"})
		}
	})
	c := f.client(t)
	ctx := context.Background()
	req, err := NewAcquireRequest("main", &pharox.AcquireOptions{
		Consumer: "w1", Duration: 90 * time.Second, Strategy: pharox.LeastUsed,
		Filters: &pharox.Filters{Country: "DE"}, SessionKey: "s", SessionTTL: time.Minute, Target: "https://shop.example/",
	})
	if err != nil {
		t.Fatal(err)
	}
	req.WaitSeconds = 2
	if _, err := c.Acquire(ctx, req); err != nil {
		t.Fatal(err)
	}
	got := bodies["POST /v1/leases/"]
	want := map[string]any{"pool_name": "main", "consumer_name": "w1", "ttl_seconds": 90.0, "strategy": "least_used",
		"filters": map[string]any{"country": "DE"}, "session_key": "s", "session_ttl_seconds": 60.0, "wait_seconds": 2.0,
		"target": "https://shop.example/"}
	if js(got) != js(want) {
		t.Errorf("acquire body = %s, want %s", js(got), js(want))
	}
	if _, err := c.Renew(ctx, leaseID, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if b := bodies["POST /v1/leases/"+leaseID.String()+"/renew"]; b["ttl_seconds"] != 30.0 {
		t.Errorf("renew body = %v", b)
	}
	if _, err := c.ReportOutcome(ctx, leaseID, pharox.Outcome{Kind: pharox.OutcomeFailure, Latency: 1500 * time.Microsecond, StatusCode: 502, Reason: "upstream"}); err != nil {
		t.Fatal(err)
	}
	if b := bodies["POST /v1/leases/"+leaseID.String()+"/outcome"]; js(b) != js(map[string]any{"kind": "failure", "latency_ms": 1.5, "status_code": 502.0, "reason": "upstream"}) {
		t.Errorf("outcome body = %v", b)
	}
	if _, err := c.ReportOutcome(ctx, leaseID, pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: 403, Target: "shop.example"}); err != nil {
		t.Fatal(err)
	}
	if b := bodies["POST /v1/leases/"+leaseID.String()+"/outcome"]; js(b) != js(map[string]any{"kind": "banned", "status_code": 403.0, "target": "shop.example"}) {
		t.Errorf("outcome body with a target = %v", b)
	}
	p, err := c.SetProxyStatus(ctx, poolID, proxyID, pharox.StatusBanned)
	if err != nil || p.Status != pharox.StatusBanned {
		t.Fatalf("SetProxyStatus = %v, %v", p, err)
	}
	if b := bodies["PATCH /v1/pools/"+poolID.String()+"/proxies/"+proxyID.String()]; b["status"] != "banned" {
		t.Errorf("patch body = %v", b)
	}
	if _, err := c.ListLeases(ctx, pharox.LeaseQuery{PoolID: poolID, Status: pharox.LeaseActive, Limit: 5}); err != nil {
		t.Fatal(err)
	}
	if q := queries["GET /v1/leases/"]; q != "limit=5&pool_id="+poolID.String()+"&status=active" {
		t.Errorf("list leases query = %q", q)
	}
	// A Go predicate cannot cross the wire: refused, never silently dropped.
	_, err = NewAcquireRequest("main", &pharox.AcquireOptions{Filters: &pharox.Filters{Predicate: func(*pharox.Proxy) bool { return true }}})
	if !errors.Is(err, pharox.ErrUnsupported) {
		t.Errorf("predicate filter: err = %v", err)
	}
	_, err = c.Acquire(ctx, api.AcquireRequest{PoolName: "main", Filters: &pharox.Filters{AnyOf: []pharox.Filters{{Predicate: func(*pharox.Proxy) bool { return true }}}}})
	if !errors.Is(err, pharox.ErrUnsupported) {
		t.Errorf("nested predicate filter: err = %v", err)
	}
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestBackoffBounds(t *testing.T) {
	c := &Client{backoff: 100 * time.Millisecond}
	for attempt, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		for range 50 {
			if d := c.backoffFor(attempt); d < want/2 || d > want {
				t.Fatalf("backoffFor(%d) = %v, want in [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
	if d := c.backoffFor(30); d > MaxBackoff || d < MaxBackoff/2 {
		t.Errorf("backoffFor(30) = %v, want capped at %v", d, MaxBackoff)
	}
	if d := parseRetryAfter("3"); d != 3*time.Second {
		t.Errorf("parseRetryAfter(3) = %v", d)
	}
}

func TestBaseURLPathPrefixKept(t *testing.T) {
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, hit int) { writeJSON(w, 200, []api.Pool{}) })
	c, err := New(f.srv.URL + "/pharox/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListPools(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.count("GET", "/pharox/v1/pools/") != 1 {
		t.Fatalf("requests: %v", f.hits)
	}
}
