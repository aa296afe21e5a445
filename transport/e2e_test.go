package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

// TestRotation sends requests through three upstreams of each protocol,
// to plain and TLS targets, and checks that they rotate, that the
// credentials work, and that every lease is given back.
func TestRotation(t *testing.T) {
	cases := []struct {
		name  string
		start func(testing.TB, string) *testpeers.Upstream
		cred  *pharox.Credentials
		tls   bool
	}{
		{"http forward", testpeers.StartHTTP, testpeers.Alice(), false},
		{"http connect", testpeers.StartHTTP, testpeers.Alice(), true},
		{"https proxy forward", startHTTPSUpstream, testpeers.Alice(), false},
		{"https proxy connect", startHTTPSUpstream, testpeers.Alice(), true},
		{"socks5 plain", testpeers.StartSOCKS5, testpeers.Alice(), false},
		{"socks5 tls", testpeers.StartSOCKS5, testpeers.Alice(), true},
		{"socks4 tls", testpeers.StartSOCKS4, &pharox.Credentials{User: testpeers.User}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testpeers.CheckLeaks(t)
			e := newEnv(t)
			ips := []string{"127.0.1.1", "127.0.1.2", "127.0.1.3"}
			for _, ip := range ips {
				e.add(0, tc.cred, tc.start(t, ip))
			}
			rt := e.transport(WithStrategy(pharox.RoundRobin))
			c := &http.Client{Transport: rt}
			url := e.tg.Plain.URL
			if tc.tls {
				url = e.tg.TLS.URL
			}
			for range 6 {
				if code, body := fetch(t, c, context.Background(), url); code != http.StatusOK || !strings.HasPrefix(body, "hello from 127.0.1.") {
					t.Fatalf("answer %d %q, want 200 from an upstream", code, body)
				}
			}
			seen := e.tg.Seen()
			count := map[string]int{}
			for _, ip := range seen {
				count[ip]++
			}
			for _, ip := range ips {
				if count[ip] != 2 {
					t.Errorf("upstream %s carried %d of 6 requests (round robin over 3), saw %v", ip, count[ip], seen)
				}
			}
			e.noLeases()
		})
	}
}

// TestConcurrentRequestsShareExclusiveProxies sends more concurrent
// requests than there are exclusive proxies: each waits for a free one,
// all succeed, and every lease is given back.
func TestConcurrentRequestsShareExclusiveProxies(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	for _, ip := range []string{"127.0.1.1", "127.0.1.2", "127.0.1.3"} {
		e.add(1, testpeers.Alice(), testpeers.StartSOCKS5(t, ip))
	}
	rt := e.transport()
	c := &http.Client{Transport: rt, Timeout: 60 * time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, 24)
	for range 24 {
		wg.Go(func() {
			resp, err := c.Get(e.tg.TLS.URL + "/drip?n=1")
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if _, err := io.ReadAll(resp.Body); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(e.tg.Seen()); n != 24 {
		t.Fatalf("target saw %d requests, want 24", n)
	}
	e.noLeases()
}

// TestSticky checks that requests of one session go through one proxy,
// and that when that proxy gets banned the session fails over to another
// and stays there.
func TestSticky(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	for _, ip := range []string{"127.0.1.1", "127.0.1.2", "127.0.1.3"} {
		e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, ip))
	}
	rt := e.transport(WithStrategy(pharox.RoundRobin))
	c := &http.Client{Transport: rt}
	ctx := WithSession(context.Background(), "account-42")
	for range 5 {
		fetch(t, c, ctx, e.tg.TLS.URL)
	}
	seen := e.tg.Seen()
	if len(slices.Compact(slices.Clone(seen))) != 1 {
		t.Fatalf("one session went through %v, want one upstream", seen)
	}
	first := seen[0]
	// Without the session, requests rotate.
	for range 3 {
		fetch(t, c, context.Background(), e.tg.TLS.URL)
	}
	if free := e.tg.Seen(); len(slices.Compact(slices.Clone(free))) == 1 {
		t.Errorf("requests without a session all went through %v, want rotation", free)
	}

	e.tg.Ban(first)
	if code, _ := fetch(t, c, ctx, e.tg.TLS.URL); code != http.StatusOK {
		t.Fatalf("request after its session's proxy was banned answered %d, want 200 through another", code)
	}
	failover := e.tg.Seen()
	if len(failover) != 2 || failover[0] != first || failover[1] == first {
		t.Fatalf("after the ban the request went through %v, want %s then another", failover, first)
	}
	for range 3 {
		fetch(t, c, ctx, e.tg.TLS.URL)
	}
	for _, ip := range e.tg.Seen() {
		if ip != failover[1] {
			t.Fatalf("session went through %s after failing over to %s, want it to stay", ip, failover[1])
		}
	}
	e.noLeases()
}

// TestLeaseLivesUntilBodyCloses checks that a lease is held while the body
// streams, and given back when it is closed (read or not) or read to its
// end.
func TestLeaseLivesUntilBodyCloses(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	rt := e.transport()
	c := &http.Client{Transport: rt}

	t.Run("closed without reading", func(t *testing.T) {
		resp, err := c.Get(e.tg.TLS.URL + "/stream")
		if err != nil {
			t.Fatal(err)
		}
		if n := e.activeLeases(); n != 1 {
			t.Fatalf("%d active leases while the body is open, want 1", n)
		}
		resp.Body.Close()
		e.noLeases()
	})
	t.Run("closed after part", func(t *testing.T) {
		resp, err := c.Get(e.tg.TLS.URL + "/stream")
		if err != nil {
			t.Fatal(err)
		}
		line := make([]byte, 6)
		if _, err := io.ReadFull(resp.Body, line); err != nil || string(line) != "first\n" {
			t.Fatalf("first line %q, %v", line, err)
		}
		if n := e.activeLeases(); n != 1 {
			t.Fatalf("%d active leases while the body streams, want 1", n)
		}
		resp.Body.Close()
		e.noLeases()
	})
	t.Run("read to the end", func(t *testing.T) {
		resp, err := c.Get(e.tg.Plain.URL + "/")
		if err != nil {
			t.Fatal(err)
		}
		if n := e.activeLeases(); n != 1 {
			t.Fatalf("%d active leases before the body was read, want 1", n)
		}
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatal(err)
		}
		// Released at the end of the body, before Close.
		e.noLeases()
		resp.Body.Close()
		e.noLeases()
	})
	t.Run("empty body", func(t *testing.T) {
		resp, err := c.Head(e.tg.Plain.URL + "/")
		if err != nil {
			t.Fatal(err)
		}
		e.noLeases()
		resp.Body.Close()
	})
	close(e.tg.release)
}

// countingLeaser counts the calls of a Leaser.
type countingLeaser struct {
	Leaser
	renews, reports atomic.Int32
	mu              sync.Mutex
	outcomes        []pharox.Outcome
}

func (c *countingLeaser) Renew(ctx context.Context, l *pharox.Lease, d time.Duration) error {
	c.renews.Add(1)
	return c.Leaser.Renew(ctx, l, d)
}

func (c *countingLeaser) ReportOutcome(ctx context.Context, l *pharox.Lease, o pharox.Outcome) (*pharox.Proxy, error) {
	c.reports.Add(1)
	c.mu.Lock()
	c.outcomes = append(c.outcomes, o)
	c.mu.Unlock()
	return c.Leaser.ReportOutcome(ctx, l, o)
}

// TestLongBodyRenewsLease streams a body for longer than the lease
// duration and checks that the lease was renewed and is still active.
func TestLongBodyRenewsLease(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	cl := &countingLeaser{Leaser: Local(e.mgr)}
	rt := e.transportWith(cl, WithLeaseDuration(600*time.Millisecond))
	c := &http.Client{Transport: rt}
	resp, err := c.Get(e.tg.TLS.URL + "/drip?n=100")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	leases, err := e.store.ListLeases(context.Background(), pharox.LeaseQuery{Status: pharox.LeaseActive})
	if err != nil || len(leases) != 1 {
		t.Fatalf("active leases %v, %v; want 1", leases, err)
	}
	firstExpiry := leases[0].ExpiresAt
	buf := make([]byte, 64)
	for i := 0; cl.renews.Load() < 3; i++ {
		if i > 100 {
			t.Fatalf("no 3 renewals while reading 100 lines (%d)", cl.renews.Load())
		}
		if _, err := resp.Body.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	l, err := e.store.GetLease(context.Background(), leases[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if l.Status != pharox.LeaseActive || !l.ExpiresAt.After(firstExpiry) {
		t.Fatalf("lease %s expiring %v after renewals (first expiry %v), want active and later", l.Status, l.ExpiresAt, firstExpiry)
	}
	resp.Body.Close()
	e.noLeases()
}

// TestRetryOnBannedProxy checks that an idempotent request answered with
// a ban goes again through another proxy, that the ban is reported, and
// that a POST is not sent twice. Bans count for the proxy everywhere here,
// so that the banned proxies stay leasable for the target (see
// target_test.go for per-site health).
func TestRetryOnBannedProxy(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	// Thresholds no test reaches: the proxies stay leasable however often
	// they are reported.
	policy := pharox.DefaultOutcomePolicy()
	policy.BanThreshold, policy.FailureThreshold = 1000, 1000
	e.mgr = pharox.NewManager(e.store, pharox.WithOutcomePolicy(policy))
	e.addProxy(e.pool.ID, testpeers.StartHTTP(t, "127.0.1.1"), "AR")
	e.addProxy(e.pool.ID, testpeers.StartHTTP(t, "127.0.1.2"), "BR")
	e.addProxy(e.pool.ID, testpeers.StartHTTP(t, "127.0.1.3"), "UY")
	e.tg.Ban("127.0.1.1")
	e.tg.block("127.0.1.2")
	rt := e.transport(WithStrategy(pharox.RoundRobin), WithMaxRetries(2), WithoutTargetHealth())
	c := &http.Client{Transport: rt}

	// Round robin starts some request on the proxy after the good one,
	// which then tries both banned proxies before the good one.
	both := false
	for i := 0; i < 6 && !both; i++ {
		code, body := fetch(t, c, context.Background(), e.tg.TLS.URL)
		if code != http.StatusOK || body != "hello from 127.0.1.3" {
			t.Fatalf("answer %d %q, want 200 through the good proxy", code, body)
		}
		seen := e.tg.Seen()
		if seen[len(seen)-1] != "127.0.1.3" || len(slices.Compact(slices.Sorted(slices.Values(seen)))) != len(seen) {
			t.Fatalf("attempts went through %v, want each proxy at most once, the good one last", seen)
		}
		both = len(seen) == 3
	}
	if !both {
		t.Fatal("no request went through both banned proxies before the good one")
	}
	for _, ip := range []string{"127.0.1.1", "127.0.1.2"} {
		if p := e.proxy(ip); p.FailureStreak < 1 || !strings.Contains(p.LastError, "target answered") {
			t.Errorf("proxy %s: streak %d, last error %q; want the ban reported", ip, p.FailureStreak, p.LastError)
		}
	}

	// A POST is not idempotent: the ban comes back as it is.
	pinned := WithRequestOptions(context.Background(), RequestOptions{Filters: &pharox.Filters{Country: "AR"}})
	req, _ := http.NewRequestWithContext(pinned, http.MethodPost, e.tg.Plain.URL+"/echo", strings.NewReader("order #1"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("POST answered %d, want the ban (429) as it came", resp.StatusCode)
	}
	if seen := e.tg.Seen(); !slices.Equal(seen, []string{"127.0.1.1"}) {
		t.Fatalf("POST reached the target through %v, want once through the banned proxy", seen)
	}

	// With an Idempotency-Key it may be sent again. Round robin over the
	// banned proxy and a good one starts a request on the banned one
	// within two requests.
	if _, err := e.store.SetProxyStatus(context.Background(), e.byIP["127.0.1.2"].ID, pharox.StatusInactive); err != nil {
		t.Fatal(err)
	}
	retried := false
	for i := 0; i < 4 && !retried; i++ {
		req, _ := http.NewRequest(http.MethodPost, e.tg.Plain.URL+"/echo", strings.NewReader("order #2"))
		req.Header.Set("Idempotency-Key", "order-2")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "order #2" {
			t.Fatalf("POST with Idempotency-Key answered %d %q, want 200 with its body", resp.StatusCode, b)
		}
		retried = slices.Equal(e.tg.Seen(), []string{"127.0.1.1", "127.0.1.3"})
	}
	if !retried {
		t.Fatal("no POST with Idempotency-Key went through the banned proxy and then another")
	}
	e.noLeases()
}

// TestRetryOnDeadProxy checks that a proxy nobody listens on is reported
// failed and the request, even a POST (nothing of it was sent), goes
// through another.
func TestRetryOnDeadProxy(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(testing.TB, string) *testpeers.Upstream
	}{{"socks5", testpeers.StartSOCKS5}, {"http", testpeers.StartHTTP}} {
		t.Run(tc.name, func(t *testing.T) {
			testpeers.CheckLeaks(t)
			e := newEnv(t)
			dead := tc.start(t, "127.0.1.1")
			dead.Close()
			e.add(0, testpeers.Alice(), dead)
			e.add(0, testpeers.Alice(), tc.start(t, "127.0.1.2"))
			rt := e.transport(WithStrategy(pharox.RoundRobin))
			c := &http.Client{Transport: rt}
			for range 2 {
				resp, err := c.Post(e.tg.TLS.URL+"/echo", "text/plain", bytes.NewReader([]byte("payload")))
				if err != nil {
					t.Fatalf("POST: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(b) != "payload" {
					t.Fatalf("POST answered %d %q, want 200 echoing its body", resp.StatusCode, b)
				}
			}
			p := e.proxy("127.0.1.1")
			if p.FailureStreak < 1 || !strings.Contains(p.LastError, "connecting through the proxy failed") {
				t.Fatalf("dead proxy: streak %d, last error %q; want the connection failure reported", p.FailureStreak, p.LastError)
			}
			if strings.Contains(p.LastError, testpeers.Password) {
				t.Fatalf("last error %q holds the proxy password", p.LastError)
			}
			e.noLeases()
		})
	}
}

// TestProxyAuthFailure checks that a proxy refusing its credentials (407)
// is reported failed with its status and the request goes through
// another, for forwarded and tunnelled requests.
func TestProxyAuthFailure(t *testing.T) {
	for _, target := range []string{"plain", "tls", "socks5"} {
		t.Run(target, func(t *testing.T) {
			testpeers.CheckLeaks(t)
			e := newEnv(t)
			start := testpeers.StartHTTP
			if target == "socks5" {
				start = testpeers.StartSOCKS5
			}
			e.add(0, &pharox.Credentials{User: testpeers.User, Password: "wrong"}, start(t, "127.0.1.1"))
			e.add(0, testpeers.Alice(), start(t, "127.0.1.2"))
			rt := e.transport(WithStrategy(pharox.RoundRobin))
			c := &http.Client{Transport: rt}
			url := e.tg.Plain.URL + "/echo"
			if target != "plain" {
				url = e.tg.TLS.URL + "/echo"
			}
			for range 2 {
				resp, err := c.Post(url, "text/plain", strings.NewReader("x"))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("answered %d, want 200 through the proxy with good credentials", resp.StatusCode)
				}
			}
			p := e.proxy("127.0.1.1")
			if target == "socks5" {
				if p.FailureStreak < 1 || p.LastError != "SOCKS proxy refused its credentials" {
					t.Fatalf("SOCKS proxy with bad credentials: streak %d, last error %q; want the refusal reported", p.FailureStreak, p.LastError)
				}
			} else if p.FailureStreak < 1 || p.LastStatusCode != http.StatusProxyAuthRequired {
				t.Fatalf("proxy with bad credentials: streak %d, status %d; want 407 failures", p.FailureStreak, p.LastStatusCode)
			}
			e.noLeases()
		})
	}
}

// TestNoProxyAvailable checks that a request waits for a busy pool up to
// its deadline and then fails with ErrNoProxyAvailable, with a context
// deadline or with http.Client.Timeout, and gets a proxy freed meanwhile.
func TestNoProxyAvailable(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.add(1, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	rt := e.transport()
	held, err := e.mgr.Acquire(context.Background(), "main", nil)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.tg.Plain.URL, nil)
	_, err = (&http.Client{Transport: rt}).Do(req)
	if !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("request with a deadline on a busy pool: %v, want ErrNoProxyAvailable", err)
	}

	_, err = (&http.Client{Transport: rt, Timeout: 300 * time.Millisecond}).Get(e.tg.Plain.URL)
	if !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("request with Client.Timeout on a busy pool: %v, want ErrNoProxyAvailable", err)
	}

	noWait := e.transport(WithMaxWait(0))
	_, err = (&http.Client{Transport: noWait}).Get(e.tg.Plain.URL)
	if !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("request without waiting on a busy pool: %v, want ErrNoProxyAvailable", err)
	}

	// A proxy freed while the request waits serves it.
	go func() {
		time.Sleep(50 * time.Millisecond)
		e.mgr.Release(context.Background(), held.ID)
	}()
	if code, _ := fetch(t, &http.Client{Transport: rt, Timeout: 20 * time.Second}, context.Background(), e.tg.Plain.URL); code != http.StatusOK {
		t.Fatalf("answer %d after the proxy was freed, want 200", code)
	}
	e.noLeases()
}

// TestBanRetiresProxyTransport checks that a banned proxy's transport
// leaves the cache and its connections are closed.
func TestBanRetiresProxyTransport(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	rt := e.transport(WithMaxRetries(0), WithoutTargetHealth())
	c := &http.Client{Transport: rt}
	fetch(t, c, context.Background(), e.tg.TLS.URL)
	id := e.byIP["127.0.1.1"].ID
	rt.proxies.mu.RLock()
	pt := rt.proxies.byID[id]
	rt.proxies.mu.RUnlock()
	if pt == nil {
		t.Fatal("no transport cached for the proxy after a request")
	}
	e.tg.Ban("127.0.1.1")
	// The default policy bans after two ban outcomes in a row.
	for range 2 {
		if code, _ := fetch(t, c, context.Background(), e.tg.TLS.URL); code != http.StatusTooManyRequests {
			t.Fatalf("answer %d, want the 429 as it came", code)
		}
	}
	if p := e.proxy("127.0.1.1"); p.Status != pharox.StatusBanned {
		t.Fatalf("proxy status %s after two bans, want banned", p.Status)
	}
	rt.proxies.mu.RLock()
	_, cached := rt.proxies.byID[id]
	rt.proxies.mu.RUnlock()
	if cached || !pt.retired.Load() {
		t.Fatalf("banned proxy's transport still cached (%v) or not retired (%v)", cached, pt.retired.Load())
	}
	e.noLeases()
}

// TestProxyCacheBounded checks that the per-proxy transports stay within
// their cap, the least recently used leaving first.
func TestProxyCacheBounded(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	for _, ip := range []string{"127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4"} {
		e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, ip))
	}
	rt := e.transport(WithStrategy(pharox.RoundRobin), WithMaxProxyTransports(2))
	c := &http.Client{Transport: rt}
	for range 8 {
		fetch(t, c, context.Background(), e.tg.TLS.URL)
	}
	rt.proxies.mu.RLock()
	n := len(rt.proxies.byID)
	rt.proxies.mu.RUnlock()
	if n != 2 {
		t.Fatalf("%d per-proxy transports cached, want the cap of 2", n)
	}
	e.noLeases()
}

// TestTargetUnreachableNotHeldAgainstProxy checks that a proxy that
// answers it cannot reach the target gets no failure.
func TestTargetUnreachableNotHeldAgainstProxy(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.add(0, testpeers.Alice(), testpeers.StartSOCKS5(t, "127.0.1.1"))
	rt := e.transport()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/"
	ln.Close()
	if _, err := (&http.Client{Transport: rt}).Get(closed); err == nil {
		t.Fatal("request to a closed port succeeded")
	}
	if p := e.proxy("127.0.1.1"); p.FailureStreak != 0 {
		t.Fatalf("proxy streak %d (%q) after the target refused, want 0", p.FailureStreak, p.LastError)
	}
	e.noLeases()
}

// TestRequestOptions checks per-request pool and filters from the context.
func TestRequestOptions(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.addProxy(e.pool.ID, testpeers.StartHTTP(t, "127.0.1.1"), "AR")
	e.addProxy(e.pool.ID, testpeers.StartHTTP(t, "127.0.1.2"), "UY")
	other, err := e.store.CreatePool(context.Background(), pharox.Pool{Name: "other"})
	if err != nil {
		t.Fatal(err)
	}
	e.addProxy(other.ID, testpeers.StartHTTP(t, "127.0.1.3"), "")
	rt := e.transport(WithStrategy(pharox.RoundRobin))
	c := &http.Client{Transport: rt}
	ctx := WithRequestOptions(context.Background(), RequestOptions{Filters: &pharox.Filters{Country: "AR"}})
	for range 3 {
		if _, body := fetch(t, c, ctx, e.tg.Plain.URL); body != "hello from 127.0.1.1" {
			t.Fatalf("filtered request answered %q, want through the AR proxy", body)
		}
	}
	if _, body := fetch(t, c, WithRequestOptions(ctx, RequestOptions{Pool: "other", Filters: &pharox.Filters{}}), e.tg.Plain.URL); body != "hello from 127.0.1.3" {
		t.Fatalf("request to pool other answered %q, want through its proxy", body)
	}
	e.noLeases()
}

// TestIdleProxyTransportsLeave checks that a proxy's transport unused for
// the idle timeout leaves the cache when another proxy's comes in (a
// proxy deleted from the pool is never leased again).
func TestIdleProxyTransportsLeave(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.addProxy(e.pool.ID, testpeers.StartHTTP(t, "127.0.1.1"), "AR")
	e.addProxy(e.pool.ID, testpeers.StartHTTP(t, "127.0.1.2"), "UY")
	base := e.base()
	base.IdleConnTimeout = time.Millisecond
	rt := e.transport(WithBaseTransport(base))
	c := &http.Client{Transport: rt}
	in := func(country string) context.Context {
		return WithRequestOptions(context.Background(), RequestOptions{Filters: &pharox.Filters{Country: country}})
	}
	fetch(t, c, in("AR"), e.tg.Plain.URL)
	time.Sleep(5 * time.Millisecond) // longer than the idle timeout
	fetch(t, c, in("UY"), e.tg.Plain.URL)
	rt.proxies.mu.RLock()
	_, ar := rt.proxies.byID[e.byIP["127.0.1.1"].ID]
	_, uy := rt.proxies.byID[e.byIP["127.0.1.2"].ID]
	rt.proxies.mu.RUnlock()
	if ar || !uy {
		t.Fatalf("cached after the idle timeout: AR %v, UY %v; want only UY", ar, uy)
	}
	e.noLeases()
}
