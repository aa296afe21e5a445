package gateway

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/internal/testpeers"
	"github.com/pharox/pharox/storage/sqlite"
)

// site is a web site on loopback reached by its own host name (a name
// under .localhost, which the test upstreams resolve to 127.0.0.1). It
// keeps its own log of the upstream each request came through (the
// source address, as every test upstream dials from its own 127.0.0.x)
// and answers the upstreams it blocks with block (status and body).
type site struct {
	name string
	srv  *httptest.Server

	mu      sync.Mutex
	log     []visit
	blocked map[string]bool
	status  int
	body    string
}

// visit is one line of a site's log.
type visit struct {
	from   string
	status int
}

func startSite(t *testing.T, name string, status int, body string, blocked ...string) *site {
	s := &site{name: name, blocked: map[string]bool{}, status: status, body: body}
	for _, ip := range blocked {
		s.blocked[ip] = true
	}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		if host, _, _ := net.SplitHostPort(r.Host); host != s.name {
			http.Error(w, "wrong site "+r.Host, http.StatusMisdirectedRequest)
			return
		}
		s.mu.Lock()
		block := s.blocked[ip]
		code := http.StatusOK
		if block {
			code = s.status
		}
		s.log = append(s.log, visit{from: ip, status: code})
		s.mu.Unlock()
		if block {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(code)
			io.WriteString(w, s.body)
			return
		}
		io.WriteString(w, "welcome to "+s.name)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// url is an absolute URL of the site, by its name.
func (s *site) url(path string) string {
	_, port, _ := net.SplitHostPort(s.srv.Listener.Addr().String())
	return "http://" + net.JoinHostPort(s.name, port) + path
}

// visits returns the site's log so far and forgets it.
func (s *site) visits() []visit {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.log
	s.log = nil
	return v
}

// fetch GETs url through the gateway and returns the status.
func fetch(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// targetStores are the stores the per-site gateway tests run on: each
// keeps per-site health (pharox.TargetStore).
func targetStores(t *testing.T) map[string]func(t *testing.T) pharox.Storage {
	return map[string]func(t *testing.T) pharox.Storage{
		"memory": func(t *testing.T) pharox.Storage { return testfactory.Memory(t) },
		"sqlite": func(t *testing.T) pharox.Storage {
			s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "pharox.db"))
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
}

// TestTargetHealthAvoidsUpstreamsBlockedBySite is the per-site health
// check of the gateway: of two sites, one blocks half the upstreams
// (answers them 403). After a warm-up, the blocking site is reached only
// through the upstreams it does not block, while the other site still
// gets traffic through every upstream. What went where is read from the
// sites' own logs, not from pharox's records.
func TestTargetHealthAvoidsUpstreamsBlockedBySite(t *testing.T) {
	for name, open := range targetStores(t) {
		for _, remote := range []bool{false, true} {
			mode := "local"
			if remote {
				mode = "remote"
			}
			t.Run(name+"/"+mode, func(t *testing.T) {
				testpeers.CheckLeaks(t)
				store := open(t)
				// Default ban statuses: 403 and 429 for a request whose
				// site is known.
				reg := prometheus.NewRegistry()
				e := newEnvOn(t, store, nil, remote, func(c *Config) { c.Registerer = reg })
				ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}
				for _, ip := range ips {
					e.add(0, nil, startHTTPUpstream(t, ip, false))
				}
				blocked := map[string]bool{"127.0.0.2": true, "127.0.0.3": true}
				a := startSite(t, "shop-a.localhost", http.StatusForbidden, "forbidden", "127.0.0.2", "127.0.0.3")
				b := startSite(t, "news-b.localhost", 0, "")

				// Warm-up: each blocked upstream answers site A 403 once,
				// which the gateway reports as a ban for site A only (and
				// retries on another upstream).
				for range 2 * len(ips) {
					fetch(t, e.client, a.url("/"))
				}
				warm := a.visits()
				for ip := range blocked {
					if n := countVisits(warm, ip); n == 0 {
						t.Fatalf("warm-up never reached site A through blocked upstream %s: %v", ip, warm)
					}
				}

				// After the warm-up, site A is served only through the
				// upstreams it does not block, every time.
				const n = 16
				for i := range n {
					if status := fetch(t, e.client, a.url(fmt.Sprintf("/after/%d", i))); status != http.StatusOK {
						t.Fatalf("site A request %d after the warm-up: status %d, want 200", i, status)
					}
				}
				after := a.visits()
				if len(after) != n {
					t.Fatalf("site A logged %d visits for %d requests (retries?): %v", len(after), n, after)
				}
				for _, v := range after {
					if blocked[v.from] || v.status != http.StatusOK {
						t.Fatalf("site A reached through blocked upstream %s after the warm-up: %v", v.from, after)
					}
				}
				for _, ip := range ips {
					if !blocked[ip] && countVisits(after, ip) == 0 {
						t.Errorf("site A never reached through unblocked upstream %s: %v", ip, after)
					}
				}

				// Site B still goes through every upstream, round robin.
				for i := range 2 * len(ips) {
					if status := fetch(t, e.client, b.url(fmt.Sprintf("/%d", i))); status != http.StatusOK {
						t.Fatalf("site B request %d: status %d", i, status)
					}
				}
				bv := b.visits()
				for _, ip := range ips {
					if got := countVisits(bv, ip); got != 2 {
						t.Errorf("site B reached through %s %d times of %d, want 2 (every upstream, round robin): %v", ip, got, len(bv), bv)
					}
				}
				// The blocked upstreams stay in service for everyone else.
				for ip := range blocked {
					if p := e.proxy(ip); p.Status != pharox.StatusActive {
						t.Errorf("upstream %s blocked by site A only is %s, want active", ip, p.Status)
					}
				}
				e.waitNoLeases()
				// One ban per blocked upstream, then it cools down for site A.
				got := gather(t, reg)
				if v := got[`pharox_gateway_target_outcomes_total{kind="banned"}`]; v != float64(len(blocked)) {
					t.Errorf("target ban outcomes = %v, want %d", v, len(blocked))
				}
				if v := got[`pharox_gateway_target_misses_total`]; v != 0 {
					t.Errorf("target misses = %v, want 0", v)
				}
			})
		}
	}
}

func countVisits(vs []visit, ip string) int {
	n := 0
	for _, v := range vs {
		if v.from == ip {
			n++
		}
	}
	return n
}

// TestBanMarkersInBody: with ban markers, an error answer whose body holds
// one is a ban for the site (retried on another upstream), while the same
// status with an ordinary body is the site's own answer.
func TestBanMarkersInBody(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t, func(c *Config) { c.BanMarkers = []string{"Unusual Traffic"} })
	ips := []string{"127.0.0.2", "127.0.0.3"}
	for _, ip := range ips {
		e.add(0, nil, startHTTPUpstream(t, ip, false))
	}
	captcha := startSite(t, "search-c.localhost", http.StatusServiceUnavailable,
		"<html><title>Sorry</title>Our systems have detected unusual traffic from your network.</html>", "127.0.0.2")
	for i := range 4 {
		if status := fetch(t, e.client, captcha.url(fmt.Sprintf("/%d", i))); status != http.StatusOK {
			t.Fatalf("request %d: status %d, want 200 through the unblocked upstream", i, status)
		}
	}
	v := captcha.visits()
	if countVisits(v, "127.0.0.2") != 1 {
		t.Fatalf("the upstream shown a block page was used %d times, want once (then cooling down for the site): %v", countVisits(v, "127.0.0.2"), v)
	}
	if p := e.proxy("127.0.0.2"); p.Status != pharox.StatusActive {
		t.Fatalf("upstream blocked by one site is %s, want active", p.Status)
	}

	// A 503 without a marker is the site's trouble: answered as it is, no ban.
	plain := startSite(t, "down-d.localhost", http.StatusServiceUnavailable, "maintenance", "127.0.0.2", "127.0.0.3")
	for range 4 {
		if status := fetch(t, e.client, plain.url("/")); status != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want the site's own 503", status)
		}
	}
	if v := plain.visits(); countVisits(v, "127.0.0.2") != 2 || countVisits(v, "127.0.0.3") != 2 {
		t.Fatalf("a plain 503 took upstreams out for the site: %v", v)
	}
	e.waitNoLeases()
}

func TestBanMarkerConfig(t *testing.T) {
	for _, markers := range [][]string{{""}, {"  "}, {strings.Repeat("x", banMarkerPeekBytes+1)}} {
		_, err := New(Config{Leaser: NewLocalLeaser(pharox.NewManager(testfactory.Memory(t))), BanMarkers: markers})
		if err == nil || !strings.Contains(err.Error(), "ban marker") {
			t.Errorf("BanMarkers %q: err = %v, want one naming the ban marker", markers[0][:min(len(markers[0]), 8)], err)
		}
	}
}

// TestTargetHealthOffWithoutTargetStore: over a lease source that keeps no
// per-site health the gateway serves as before, bans counting against the
// upstream everywhere, and says so once.
func TestTargetHealthOffWithoutTargetStore(t *testing.T) {
	for _, remote := range []bool{false, true} {
		t.Run(map[bool]string{false: "local", true: "remote"}[remote], func(t *testing.T) {
			testpeers.CheckLeaks(t)
			// Without per-site health 403 is no ban by default: name it.
			e := newEnvOn(t, testfactory.WithoutTargets(testfactory.Memory(t)), nil, remote, func(c *Config) {
				c.BanStatuses = []int{http.StatusForbidden}
			})
			for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
				e.add(0, nil, startHTTPUpstream(t, ip, false))
			}
			a := startSite(t, "shop-a.localhost", http.StatusForbidden, "forbidden", "127.0.0.2")
			for i := range 4 {
				if status := fetch(t, e.client, a.url(fmt.Sprintf("/%d", i))); status != http.StatusOK {
					t.Fatalf("request %d: status %d, want 200 (retried past the blocked upstream)", i, status)
				}
			}
			// Two bans (the default BanThreshold) take it out for everyone.
			if p := e.proxy("127.0.0.2"); p.LastStatusCode != http.StatusForbidden || p.Status != pharox.StatusBanned {
				t.Fatalf("blocked upstream: status %s, last status %d; want banned everywhere by the 403s", p.Status, p.LastStatusCode)
			}
			if n := strings.Count(e.logs.String(), "keeps no per-site"); n != 1 {
				t.Fatalf("the gateway said %d times that the lease source keeps no per-site health, want once:\n%s", n, e.logs.String())
			}
			e.waitNoLeases()
		})
	}
}

// TestTargetHealthEverySiteUpstreamCooling: once every upstream cools
// down for a site, its requests get the gateway's 503 naming the site,
// while another site is served as before.
func TestTargetHealthEverySiteUpstreamCooling(t *testing.T) {
	testpeers.CheckLeaks(t)
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(c *Config) { c.Registerer = reg })
	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		e.add(0, nil, startHTTPUpstream(t, ip, false))
	}
	a := startSite(t, "shop-a.localhost", http.StatusForbidden, "forbidden", "127.0.0.2", "127.0.0.3")
	b := startSite(t, "news-b.localhost", 0, "")
	// Both upstreams are tried and banned: the client gets the site's 403.
	if status, _, reason := get(t, e.client, a.url("/")); status != http.StatusForbidden || reason != "" {
		t.Fatalf("first request: %d (reason %q), want the site's own 403", status, reason)
	}
	status, _, reason := get(t, e.client, a.url("/again"))
	if status != http.StatusServiceUnavailable || !strings.Contains(reason, "shop-a.localhost") || !strings.Contains(reason, "cooling down") {
		t.Fatalf("with every upstream cooling down for the site: %d %q, want 503 naming the site", status, reason)
	}
	if v := a.visits(); len(v) != 2 {
		t.Fatalf("site A saw %v, want the two banned attempts only", v)
	}
	if status := fetch(t, e.client, b.url("/")); status != http.StatusOK {
		t.Fatalf("site B: %d, want 200", status)
	}
	e.waitNoLeases()
	if v := gather(t, reg)[`pharox_gateway_target_misses_total`]; v != 1 {
		t.Errorf("target misses = %v, want 1", v)
	}
}
