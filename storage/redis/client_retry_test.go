package redis

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/redistest"
	goredis "github.com/redis/go-redis/v9"
)

// The tests in this file force go-redis to retry a script: another client
// keeps Redis busy with a slow script for stall, longer than the store
// client's read timeout, so the store's call times out, go-redis sends it
// again on a new connection, and Redis, once free, runs both. Each store
// runs on a redis-server the test starts, so the stalls hold up no other
// test sharing PHAROX_TEST_REDIS_URL.
const (
	stall       = 180 * time.Millisecond
	readTimeout = 100 * time.Millisecond
)

// busyScript keeps Redis busy for ARGV[1] microseconds.
var busyScript = goredis.NewScript(`
local function now() local t = redis.call('TIME') return tonumber(t[1]) * 1000000 + tonumber(t[2]) end
local stop = now() + tonumber(ARGV[1])
while now() < stop do end
return 1`)

// retryingStore is a store whose client times reads out after readTimeout
// and keeps go-redis's default retries; dials counts its connections.
// It runs on a redis-server of its own (see privateRedis), so that the
// slow scripts stall no other test.
type retryingStore struct {
	*Store
	addr  string
	dials atomic.Int64
}

// privateRedis starts a redis-server on a free loopback port for the
// test and returns its address; the server stops when the test ends. It
// skips the test when PHAROX_TEST_REDIS_URL is unset (like every Redis
// test) or redis-server is not installed.
func privateRedis(t testing.TB) string {
	t.Helper()
	redistest.Client(t) // skips without PHAROX_TEST_REDIS_URL
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (Debian: redis-server); skipping the client retry tests")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	l.Close()
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	c := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	for i := 0; c.Ping(t.Context()).Err() != nil; i++ {
		if i == 500 {
			t.Fatalf("redis-server on %s did not answer within 500 pings", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return addr
}

// clientOf returns a client of the server at addr, closed when the test
// ends.
func clientOf(t testing.TB, addr string, tune func(*goredis.Options)) *goredis.Client {
	o := &goredis.Options{Addr: addr}
	tune(o)
	c := goredis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

func newRetryingStore(t *testing.T, opts ...Option) *retryingStore {
	t.Helper()
	rs := &retryingStore{addr: privateRedis(t)}
	c := clientOf(t, rs.addr, func(o *goredis.Options) { o.ReadTimeout = readTimeout })
	c.AddHook(dialCounter{&rs.dials})
	s, err := New(c, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.LoadScripts(t.Context()); err != nil {
		t.Fatal(err)
	}
	rs.Store = s
	return rs
}

// dialCounter counts a client's dials.
type dialCounter struct{ n *atomic.Int64 }

func (h dialCounter) DialHook(next goredis.DialHook) goredis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		h.n.Add(1)
		return next(ctx, network, addr)
	}
}

func (h dialCounter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook { return next }

func (h dialCounter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

// stalled runs op while Redis is busy with a slow script from another
// client, and reports whether the store's client retried meanwhile (it
// dialled a new connection, which go-redis does only to retry after the
// timeout). It returns once the slow script has ended.
func (rs *retryingStore) stalled(t *testing.T, op func()) bool {
	t.Helper()
	blocker := clientOf(t, rs.addr, func(o *goredis.Options) { o.ReadTimeout = 10 * time.Second; o.MaxRetries = -1 })
	probe := clientOf(t, rs.addr, func(o *goredis.Options) { o.ReadTimeout = 20 * time.Millisecond; o.MaxRetries = -1 })
	ctx := t.Context()
	if err := busyScript.Load(ctx, blocker).Err(); err != nil {
		t.Fatal(err)
	}
	// The store's connection must be open already, so that a dial during
	// op can only be a retry's.
	if err := rs.rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- busyScript.Run(ctx, blocker, nil, stall.Microseconds()).Err() }()
	// A ping that times out tells the slow script is running.
	for i := 0; ; i++ {
		err := probe.Ping(ctx).Err()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i == 1000 {
			t.Fatal("the slow script did not start within 1000 pings")
		}
		time.Sleep(time.Millisecond)
	}
	before := rs.dials.Load()
	op()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return rs.dials.Load() > before
}

// retried runs op stalled, on a fresh store from setup each time, until
// the client retried (at most three times: on a loaded machine the call
// may reach Redis only after the slow script).
func retried(t *testing.T, setup func(t *testing.T) *retryingStore, op func(rs *retryingStore), check func(rs *retryingStore)) {
	t.Helper()
	for range 3 {
		rs := setup(t)
		if rs.stalled(t, func() { op(rs) }) {
			check(rs)
			return
		}
	}
	t.Fatal("the store's client never retried in three stalled attempts")
}

// retryPool creates pool "p" with one proxy of up to four leases and a
// consumer, and returns the proxy and an acquisition request.
func retryPool(t *testing.T, s *Store) (*pharox.Proxy, pharox.AcquireRequest) {
	t.Helper()
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "127.0.0.1", Port: 8080,
		Protocol: pharox.ProtocolHTTP, MaxConcurrency: ptrutil.Ptr(4)}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	return ps[0], pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, ConsumerName: c.Name,
		Duration: time.Hour, Strategy: pharox.FirstAvailable}
}

// checkLoad checks that the proxy counts exactly the active leases.
func checkLoad(t *testing.T, s *Store, p *pharox.Proxy, want int) {
	t.Helper()
	got, err := s.GetProxy(t.Context(), p.ID)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.GetPoolStats(t.Context(), "p")
	if err != nil {
		t.Fatal(err)
	}
	if got.CurrentLeases != want || st.TotalLeases != want {
		t.Errorf("proxy counts %d leases, pool %d active, want %d and %d", got.CurrentLeases, st.TotalLeases, want, want)
	}
}

// TestRetriedAcquireTakesOneSlot checks that an acquisition go-redis sent
// twice (acquire.lua alone, acquire_many.lua in a batch) takes one slot
// per lease: the proxy counts the leases it has, and once they are
// released it can be deleted.
func TestRetriedAcquireTakesOneSlot(t *testing.T) {
	for _, n := range []int{1, 2} {
		name := "single"
		if n > 1 {
			name = "batched"
		}
		t.Run(name, func(t *testing.T) {
			var proxy *pharox.Proxy
			var req pharox.AcquireRequest
			var leases []*pharox.Lease
			retried(t, func(t *testing.T) *retryingStore {
				rs := newRetryingStore(t)
				proxy, req = retryPool(t, rs.Store)
				return rs
			}, func(rs *retryingStore) {
				reqs := make([]pharox.AcquireRequest, n)
				for i := range reqs {
					reqs[i] = req
				}
				leases = leases[:0]
				for i, r := range rs.execAcquire(t.Context(), acquireKey{pool: "p", strategy: string(req.Strategy)}, reqs) {
					if r.Err != nil {
						t.Fatalf("acquisition %d: %v", i, r.Err)
					}
					leases = append(leases, r.Val)
				}
			}, func(rs *retryingStore) {
				ctx := t.Context()
				checkLoad(t, rs.Store, proxy, n)
				for _, l := range leases {
					if _, err := rs.ReleaseLease(ctx, l.ID, nil); err != nil {
						t.Fatalf("release %s: %v", l.ID, err)
					}
				}
				checkLoad(t, rs.Store, proxy, 0)
				if err := rs.DeleteProxy(ctx, proxy.ID); err != nil {
					t.Errorf("delete the proxy after its leases were released: %v", err)
				}
			})
		})
	}
}

// TestRetriedReleaseSucceeds checks that a release go-redis sent twice
// (release.lua alone, release_many.lua in a batch) reports the lease
// released, not ErrLeaseNotActive, and frees its slot once.
func TestRetriedReleaseSucceeds(t *testing.T) {
	for _, n := range []int{1, 2} {
		name := "single"
		if n > 1 {
			name = "batched"
		}
		t.Run(name, func(t *testing.T) {
			var proxy *pharox.Proxy
			var ids []uuid.UUID
			retried(t, func(t *testing.T) *retryingStore {
				rs := newRetryingStore(t)
				var req pharox.AcquireRequest
				proxy, req = retryPool(t, rs.Store)
				ids = ids[:0]
				for range n {
					l, err := rs.AcquireLease(t.Context(), req)
					if err != nil {
						t.Fatal(err)
					}
					ids = append(ids, l.ID)
				}
				return rs
			}, func(rs *retryingStore) {
				for i, r := range rs.execRelease(t.Context(), struct{}{}, plainReleases(ids)) {
					if r.Err != nil {
						t.Errorf("release %d of a retried batch of %d: %v", i, n, r.Err)
						continue
					}
					if r.Val.Status != pharox.LeaseReleased || r.Val.ID != ids[i] {
						t.Errorf("release %d returned lease %s %s, want %s released", i, r.Val.ID, r.Val.Status, ids[i])
					}
				}
			}, func(rs *retryingStore) {
				checkLoad(t, rs.Store, proxy, 0)
			})
		})
	}
}

// TestRetriedAdminWritesSucceed checks that CreatePool, AddProxies,
// DeleteProxy and DeletePool sent twice by go-redis report their success,
// not ErrAlreadyExists or a not-found error for the change their first run
// made, while a second call of its own still gets those errors.
func TestRetriedAdminWritesSucceed(t *testing.T) {
	ctx := t.Context()
	type step struct {
		what string
		op   func(s *Store) error
		want error // what a second call of its own gets
	}
	// steps returns the sequence, each step a call made twice: once
	// stalled, so that go-redis sends it twice, then on its own.
	steps := func() []step {
		var pool *pharox.Pool
		var proxy *pharox.Proxy
		return []step{
			{"CreatePool", func(s *Store) error {
				p, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
				if err == nil {
					pool = p
				}
				return err
			}, pharox.ErrAlreadyExists},
			{"AddProxies", func(s *Store) error {
				ps, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "127.0.0.1", Port: 8080, Protocol: pharox.ProtocolHTTP}})
				if err == nil {
					proxy = ps[0]
				}
				return err
			}, pharox.ErrAlreadyExists},
			{"DeleteProxy", func(s *Store) error { return s.DeleteProxy(ctx, proxy.ID) }, pharox.ErrProxyNotFound},
			{"DeletePool", func(s *Store) error { return s.DeletePool(ctx, pool.ID) }, pharox.ErrPoolNotFound},
		}
	}
	// On a loaded machine a call may reach Redis only after the slow
	// script, unretried: the sequence then starts over on a fresh store.
	for attempt := 0; ; attempt++ {
		rs := newRetryingStore(t)
		all := true
		for _, st := range steps() {
			var err error
			if !rs.stalled(t, func() { err = st.op(rs.Store) }) {
				all = false
			}
			if err != nil {
				t.Fatalf("%s sent twice: %v", st.what, err)
			}
			if err := st.op(rs.Store); !errors.Is(err, st.want) {
				t.Errorf("%s again, a call of its own: err = %v, want %v", st.what, err, st.want)
			}
		}
		if all {
			return
		}
		if attempt == 2 {
			t.Fatal("the store's client did not retry every step in three attempts")
		}
	}
}
