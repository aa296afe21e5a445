package transport

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
	"github.com/pharox/pharox/observe"
)

// site is a web site reached by its own name under .localhost, logging
// the proxy each request came through and answering 429 to those it
// blocks.
type site struct {
	name string
	srv  *httptest.Server

	mu      sync.Mutex
	from    []string
	blocked map[string]bool
	status  int // the answer to a blocked proxy
}

func startSite(t *testing.T, name string, blocked ...string) *site {
	return startSiteAnswering(t, name, http.StatusTooManyRequests, blocked...)
}

func startSiteAnswering(t *testing.T, name string, status int, blocked ...string) *site {
	s := &site{name: name, blocked: map[string]bool{}, status: status}
	for _, ip := range blocked {
		s.blocked[ip] = true
	}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		s.mu.Lock()
		s.from = append(s.from, ip)
		block := s.blocked[ip]
		s.mu.Unlock()
		if block {
			http.Error(w, "go away", s.status)
			return
		}
		io.WriteString(w, "welcome to "+s.name)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *site) url() string {
	_, port, _ := net.SplitHostPort(s.srv.Listener.Addr().String())
	return "http://" + net.JoinHostPort(s.name, port) + "/"
}

// visits returns the proxies the site saw, by request, and forgets them.
func (s *site) visits() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.from
	s.from = nil
	return v
}

func countOf(ips []string, ip string) int {
	n := 0
	for _, x := range ips {
		if x == ip {
			n++
		}
	}
	return n
}

// TestTargetHealth: a ban counts for the site that answered it. The
// banned proxy is not used for that site any more (nor for a request
// naming that site with RequestOptions.Target), and keeps serving the
// other site, as the sites' own logs show.
func TestTargetHealth(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	for _, ip := range []string{"127.0.1.1", "127.0.1.2"} {
		e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, ip))
	}
	reg := prometheus.NewRegistry()
	m, err := observe.NewTransportMetrics(reg, observe.PrometheusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rt := e.transport(WithStrategy(pharox.RoundRobin), WithObserver(m))
	c := &http.Client{Transport: rt}
	a := startSite(t, "shop-a.localhost", "127.0.1.1")
	b := startSite(t, "news-b.localhost")

	for range 4 {
		if code, _ := fetch(t, c, context.Background(), a.url()); code != http.StatusOK {
			t.Fatalf("site A answered %d, want 200 through the proxy it does not block", code)
		}
	}
	if v := a.visits(); countOf(v, "127.0.1.1") != 1 || countOf(v, "127.0.1.2") != 4 {
		t.Fatalf("site A saw %v, want the blocking proxy once (then cooling down for it) and the other every time", v)
	}
	for range 4 {
		if code, _ := fetch(t, c, context.Background(), b.url()); code != http.StatusOK {
			t.Fatalf("site B answered %d", code)
		}
	}
	if v := b.visits(); countOf(v, "127.0.1.1") != 2 || countOf(v, "127.0.1.2") != 2 {
		t.Fatalf("site B saw %v, want both proxies, round robin", v)
	}
	if p := e.proxy("127.0.1.1"); p.Status != pharox.StatusActive {
		t.Fatalf("proxy blocked by one site is %s, want active", p.Status)
	}

	// A request naming site A goes where site A's requests go.
	ctx := WithRequestOptions(context.Background(), RequestOptions{Target: "https://www.shop-a.localhost/"})
	for range 2 {
		fetch(t, c, ctx, b.url())
	}
	if v := b.visits(); countOf(v, "127.0.1.1") != 0 {
		t.Fatalf("requests counted for site A went through the proxy cooling down for it: %v", v)
	}
	bad := WithRequestOptions(context.Background(), RequestOptions{Target: "exa mple.com"})
	req, _ := http.NewRequestWithContext(bad, http.MethodGet, b.url(), nil)
	if _, err := c.Do(req); err == nil || !strings.Contains(err.Error(), `target "exa mple.com"`) {
		t.Fatalf("request with a bad target: %v, want an error naming it", err)
	}

	if got := testutil.ToFloat64(m.TargetOutcomes().WithLabelValues("main", "banned")); got != 1 {
		t.Errorf("banned outcomes for a site %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.TargetOutcomes().WithLabelValues("main", "success")); got < 8 {
		t.Errorf("successful outcomes for a site %v, want every successful attempt", got)
	}
	e.noLeases()
}

// TestTargetHealthOff: with WithoutTargetHealth a ban counts for the proxy
// everywhere and acquisitions name no site.
func TestTargetHealthOff(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.2"))
	rt := e.transport(WithStrategy(pharox.RoundRobin), WithoutTargetHealth())
	c := &http.Client{Transport: rt}
	a := startSite(t, "shop-a.localhost", "127.0.1.1")
	for range 2 {
		fetch(t, c, context.Background(), a.url())
	}
	p := e.proxy("127.0.1.1")
	if p.LastStatusCode != http.StatusTooManyRequests || p.FailureStreak < 1 {
		t.Fatalf("proxy banned with per-site health off: streak %d, last status %d; want the ban counted for it", p.FailureStreak, p.LastStatusCode)
	}
	if states, err := e.mgr.TargetStates(context.Background(), p.ID); err != nil || len(states) != 0 {
		t.Fatalf("per-site states %+v, %v; want none", states, err)
	}
	e.noLeases()
}

// TestPlain403IsABanForTheSite: the default classifier takes a plain 403
// for the site's own answer (no retry), but reported with the site it is a
// ban for that site under the default per-site policy, so the next
// requests to the site avoid the proxy, and other sites do not.
func TestPlain403IsABanForTheSite(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.2"))
	rt := e.transport(WithStrategy(pharox.RoundRobin))
	c := &http.Client{Transport: rt}
	a := startSiteAnswering(t, "shop-a.localhost", http.StatusForbidden, "127.0.1.1")
	b := startSite(t, "news-b.localhost")
	// Warm both proxies up on site B first: success reports are spaced
	// out, and the 403 must be reported all the same.
	for range 2 {
		fetch(t, c, context.Background(), b.url())
	}
	b.visits()
	codes := map[int]int{}
	for range 4 {
		code, _ := fetch(t, c, context.Background(), a.url())
		codes[code]++
	}
	if codes[http.StatusForbidden] != 1 || codes[http.StatusOK] != 3 {
		t.Fatalf("site A answered %v, want one 403 (no retry on a plain 403) and then 200s", codes)
	}
	if v := a.visits(); countOf(v, "127.0.1.1") != 1 {
		t.Fatalf("site A saw %v, want the proxy it answered 403 only once", v)
	}
	for range 2 {
		fetch(t, c, context.Background(), b.url())
	}
	if v := b.visits(); countOf(v, "127.0.1.1") != 1 {
		t.Fatalf("site B saw %v, want both proxies still", v)
	}
	e.noLeases()
}
