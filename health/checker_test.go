package health

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

func newTestChecker(t *testing.T, opts CheckerOptions) *Checker {
	t.Helper()
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	c, err := NewChecker(opts)
	if err != nil {
		t.Fatalf("NewChecker: %v", err)
	}
	return c
}

// TestCheckerProtocols probes every protocol against real peers, over http
// and https targets.
func TestCheckerProtocols(t *testing.T) {
	tg := newTarget(t)
	httpProxy := startHTTPProxy(t, openProxy)
	httpsProxy := startHTTPProxy(t, testpeers.HTTPOptions{NoAuth: true, TLS: true})
	authProxy := startHTTPProxy(t, testpeers.HTTPOptions{})
	socks5Open := startSOCKS5(t, false)
	socks5Auth := startSOCKS5(t, true)
	socks4 := startSOCKS4(t, "")
	socks4User := startSOCKS4(t, testpeers.User)

	cases := []struct {
		name  string
		proxy *pharox.Proxy
	}{
		{"http", proxyAt(t, httpProxy, pharox.ProtocolHTTP, nil)},
		{"http with auth", proxyAt(t, authProxy, pharox.ProtocolHTTP, testpeers.Alice())},
		{"https proxy", proxyAt(t, httpsProxy, pharox.ProtocolHTTPS, nil)},
		{"socks5", proxyAt(t, socks5Open, pharox.ProtocolSOCKS5, nil)},
		{"socks5 with auth", proxyAt(t, socks5Auth, pharox.ProtocolSOCKS5, testpeers.Alice())},
		{"socks4", proxyAt(t, socks4, pharox.ProtocolSOCKS4, nil)},
		{"socks4 with user id", proxyAt(t, socks4User, pharox.ProtocolSOCKS4, &pharox.Credentials{User: testpeers.User})},
	}
	for _, targetURL := range []string{tg.Plain.URL, tg.TLS.URL} {
		c := newTestChecker(t, CheckerOptions{TargetURL: targetURL, TLSConfig: tlsTrusting(tg)})
		for _, tc := range cases {
			t.Run(tc.name+" to "+targetURL[:strings.Index(targetURL, ":")], func(t *testing.T) {
				before := tg.hits.Load()
				r := c.Probe(context.Background(), tc.proxy)
				if !r.OK() || r.Status != pharox.StatusActive {
					t.Fatalf("probe = %s/%s (%v), want active", r.Status, r.Kind, r.Err)
				}
				if r.StatusCode != http.StatusOK || r.Latency <= 0 || r.ProxyID != tc.proxy.ID || r.Protocol != tc.proxy.Protocol {
					t.Fatalf("result = %+v", r.HealthCheckResult)
				}
				if tg.hits.Load() != before+1 {
					t.Fatalf("target saw %d requests, want 1", tg.hits.Load()-before)
				}
				if err := r.HealthCheckResult.Validate(); err != nil {
					t.Fatalf("result does not validate: %v", err)
				}
			})
		}
	}
}

// TestCheckerFailures checks each failure lands in its precise kind.
func TestCheckerFailures(t *testing.T) {
	tg := newTarget(t)
	authProxy := startHTTPProxy(t, testpeers.HTTPOptions{})
	always407 := startHTTPProxy(t, testpeers.HTTPOptions{Accept: rejectAll})
	httpsProxy := startHTTPProxy(t, testpeers.HTTPOptions{NoAuth: true, TLS: true})
	slow := startHTTPProxy(t, slowProxy(400*time.Millisecond))
	socks5Auth := startSOCKS5(t, true)
	socks4User := startSOCKS4(t, testpeers.User)
	reset := startResetPeer(t)
	closed := closedPort(t)
	wrong := &pharox.Credentials{User: testpeers.User, Password: "wrong-" + testpeers.Password}

	trusting := func(targetURL string) CheckerOptions {
		return CheckerOptions{TargetURL: targetURL, TLSConfig: tlsTrusting(tg)}
	}
	cases := []struct {
		name     string
		opts     CheckerOptions
		proxy    *pharox.Proxy
		kind     ErrorKind
		status   pharox.ProxyStatus
		httpCode int
	}{
		{"407 from auth proxy, plain", trusting(tg.Plain.URL), proxyAt(t, authProxy, pharox.ProtocolHTTP, wrong), KindProxyAuth, pharox.StatusInactive, 407},
		{"407 from auth proxy, CONNECT", trusting(tg.TLS.URL), proxyAt(t, authProxy, pharox.ProtocolHTTP, wrong), KindProxyAuth, pharox.StatusInactive, 407},
		{"407 without credentials", trusting(tg.Plain.URL), proxyAt(t, authProxy, pharox.ProtocolHTTP, nil), KindProxyAuth, pharox.StatusInactive, 407},
		{"always 407, plain", trusting(tg.Plain.URL), proxyAt(t, always407, pharox.ProtocolHTTP, testpeers.Alice()), KindProxyAuth, pharox.StatusInactive, 407},
		{"always 407, CONNECT", trusting(tg.TLS.URL), proxyAt(t, always407, pharox.ProtocolHTTP, testpeers.Alice()), KindProxyAuth, pharox.StatusInactive, 407},
		{"socks5 wrong password", trusting(tg.Plain.URL), proxyAt(t, socks5Auth, pharox.ProtocolSOCKS5, wrong), KindProxyAuth, pharox.StatusInactive, 0},
		{"socks5 no credentials", trusting(tg.Plain.URL), proxyAt(t, socks5Auth, pharox.ProtocolSOCKS5, nil), KindProxyAuth, pharox.StatusInactive, 0},
		{"socks4 unknown user id", trusting(tg.Plain.URL), proxyAt(t, socks4User, pharox.ProtocolSOCKS4, &pharox.Credentials{User: "mallory"}), KindProxyAuth, pharox.StatusInactive, 0},
		{"https proxy untrusted certificate", CheckerOptions{TargetURL: tg.Plain.URL}, proxyAt(t, httpsProxy, pharox.ProtocolHTTPS, nil), KindTLS, pharox.StatusInactive, 0},
		{"https target untrusted through proxy", CheckerOptions{TargetURL: tg.TLS.URL}, proxyAt(t, authProxy, pharox.ProtocolHTTP, testpeers.Alice()), KindTLS, pharox.StatusInactive, 0},
		{"slow proxy past the timeout", CheckerOptions{TargetURL: tg.Plain.URL, Timeout: 100 * time.Millisecond}, proxyAt(t, slow, pharox.ProtocolHTTP, nil), KindTimeout, pharox.StatusInactive, 0},
		{"slow proxy past the timeout, CONNECT", CheckerOptions{TargetURL: tg.TLS.URL, TLSConfig: tlsTrusting(tg), Timeout: 100 * time.Millisecond}, proxyAt(t, slow, pharox.ProtocolHTTP, nil), KindTimeout, pharox.StatusInactive, 0},
		{"reset http", trusting(tg.Plain.URL), proxyAt(t, reset, pharox.ProtocolHTTP, nil), KindReset, pharox.StatusInactive, 0},
		{"reset socks5", trusting(tg.Plain.URL), proxyAt(t, reset, pharox.ProtocolSOCKS5, nil), KindReset, pharox.StatusInactive, 0},
		{"reset socks4", trusting(tg.Plain.URL), proxyAt(t, reset, pharox.ProtocolSOCKS4, nil), KindReset, pharox.StatusInactive, 0},
		{"closed port http", trusting(tg.Plain.URL), proxyAt(t, closed, pharox.ProtocolHTTP, nil), KindRefused, pharox.StatusInactive, 0},
		{"closed port https", trusting(tg.TLS.URL), proxyAt(t, closed, pharox.ProtocolHTTPS, nil), KindRefused, pharox.StatusInactive, 0},
		{"closed port socks5", trusting(tg.Plain.URL), proxyAt(t, closed, pharox.ProtocolSOCKS5, testpeers.Alice()), KindRefused, pharox.StatusInactive, 0},
		{"closed port socks4", trusting(tg.Plain.URL), proxyAt(t, closed, pharox.ProtocolSOCKS4, nil), KindRefused, pharox.StatusInactive, 0},
		{"unknown protocol", trusting(tg.Plain.URL), proxyAt(t, closed, "gopher", nil), KindInvalid, pharox.StatusInactive, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.Timeout == 0 {
				tc.opts.Timeout = 5 * time.Second
			}
			c := newTestChecker(t, tc.opts)
			r := c.Probe(context.Background(), tc.proxy)
			if r.Kind != tc.kind || r.Status != tc.status || r.StatusCode != tc.httpCode {
				t.Fatalf("probe = status %s kind %q code %d (%v); want %s %q %d",
					r.Status, r.Kind, r.StatusCode, r.Err, tc.status, tc.kind, tc.httpCode)
			}
			if r.ErrorKind != string(r.Kind) || r.Error == "" || r.Err == nil || r.OK() {
				t.Fatalf("failure fields inconsistent: %+v", r)
			}
			if strings.Contains(r.Error, testpeers.Password) {
				t.Fatalf("error text leaks the proxy password: %q", r.Error)
			}
		})
	}
}

// TestCheckerTargetAnswers covers classification of the target's answers:
// slow, ban codes, ban pages, unexpected codes, headers.
func TestCheckerTargetAnswers(t *testing.T) {
	tg := newTarget(t)
	httpProxy := startHTTPProxy(t, openProxy)
	slow := startHTTPProxy(t, slowProxy(time.Second))
	p := proxyAt(t, httpProxy, pharox.ProtocolHTTP, nil)
	cases := []struct {
		name   string
		opts   CheckerOptions
		proxy  *pharox.Proxy
		kind   ErrorKind
		status pharox.ProxyStatus
		code   int
	}{
		{"slow over threshold", CheckerOptions{TargetURL: tg.Plain.URL, SlowThreshold: 300 * time.Millisecond}, proxyAt(t, slow, pharox.ProtocolHTTP, nil), KindNone, pharox.StatusSlow, 200},
		{"slow threshold not reached", CheckerOptions{TargetURL: tg.Plain.URL, SlowThreshold: 4 * time.Second}, proxyAt(t, slow, pharox.ProtocolHTTP, nil), KindNone, pharox.StatusActive, 200},
		{"429 bans by default", CheckerOptions{TargetURL: tg.Plain.URL + "/status/429"}, p, KindBanned, pharox.StatusBanned, 429},
		{"403 does not ban by default", CheckerOptions{TargetURL: tg.Plain.URL + "/status/403"}, p, KindUnexpectedStatus, pharox.StatusInactive, 403},
		{"403 bans when configured", CheckerOptions{TargetURL: tg.Plain.URL + "/status/403", BanStatusCodes: []int{403, 429}}, p, KindBanned, pharox.StatusBanned, 403},
		{"ban detection disabled", CheckerOptions{TargetURL: tg.Plain.URL + "/status/429", BanStatusCodes: []int{}}, p, KindUnexpectedStatus, pharox.StatusInactive, 429},
		{"500 is unexpected", CheckerOptions{TargetURL: tg.Plain.URL + "/status/500"}, p, KindUnexpectedStatus, pharox.StatusInactive, 500},
		{"204 is a 2xx", CheckerOptions{TargetURL: tg.Plain.URL + "/status/204"}, p, KindNone, pharox.StatusActive, 204},
		{"204 not in expected list", CheckerOptions{TargetURL: tg.Plain.URL + "/status/204", ExpectedStatus: []int{200}}, p, KindUnexpectedStatus, pharox.StatusInactive, 204},
		{"302 expected when listed", CheckerOptions{TargetURL: tg.Plain.URL + "/status/302", ExpectedStatus: []int{301, 302}}, p, KindNone, pharox.StatusActive, 302},
		{"ban page", CheckerOptions{TargetURL: tg.Plain.URL + "/captcha", BanBodyContains: []string{"captcha"}}, p, KindBanned, pharox.StatusBanned, 200},
		{"ban page pattern absent", CheckerOptions{TargetURL: tg.Plain.URL, BanBodyContains: []string{"captcha"}}, p, KindNone, pharox.StatusActive, 200},
		{"headers sent", CheckerOptions{TargetURL: tg.Plain.URL + "/needs-header", Headers: http.Header{"X-Probe": {"yes"}}}, p, KindNone, pharox.StatusActive, 200},
		{"headers missing", CheckerOptions{TargetURL: tg.Plain.URL + "/needs-header"}, p, KindUnexpectedStatus, pharox.StatusInactive, 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestChecker(t, tc.opts)
			r := c.Probe(context.Background(), tc.proxy)
			if r.Kind != tc.kind || r.Status != tc.status || r.StatusCode != tc.code {
				t.Fatalf("probe = status %s kind %q code %d (%v); want %s %q %d",
					r.Status, r.Kind, r.StatusCode, r.Err, tc.status, tc.kind, tc.code)
			}
			// Every status but active carries its reason.
			if (r.Error == "") != (r.Status == pharox.StatusActive) {
				t.Fatalf("status %s with reason %q", r.Status, r.Error)
			}
		})
	}
}

func TestCheckerCanceled(t *testing.T) {
	tg := newTarget(t)
	slow := startHTTPProxy(t, slowProxy(2*time.Second))
	c := newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	r := c.Probe(ctx, proxyAt(t, slow, pharox.ProtocolHTTP, nil))
	if r.Kind != KindCanceled || !errors.Is(r.Err, context.Canceled) {
		t.Fatalf("probe = %q (%v), want canceled", r.Kind, r.Err)
	}
}

func TestCheckerDirect(t *testing.T) {
	tg := newTarget(t)
	c := newTestChecker(t, CheckerOptions{TargetURL: tg.TLS.URL, TLSConfig: tlsTrusting(tg)})
	if r := c.CheckDirect(context.Background()); !r.OK() || r.StatusCode != 200 {
		t.Fatalf("direct = %s (%v)", r.Kind, r.Err)
	}
	// A Host header sets the request's Host.
	c = newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL + "/needs-host", Headers: http.Header{"Host": {"probe.example"}}})
	if r := c.CheckDirect(context.Background()); !r.OK() {
		t.Fatalf("direct with headers = %s (%v)", r.Kind, r.Err)
	}
	c = newTestChecker(t, CheckerOptions{TargetURL: "http://" + closedPort(t)})
	if r := c.CheckDirect(context.Background()); r.Kind != KindRefused {
		t.Fatalf("direct to closed port = %s (%v), want refused", r.Kind, r.Err)
	}
}

func TestNewCheckerValidates(t *testing.T) {
	for _, opts := range []CheckerOptions{
		{},
		{TargetURL: "ftp://127.0.0.1/"},
		{TargetURL: "http://"},
		{TargetURL: "http://127.0.0.1/", Timeout: -time.Second},
		{TargetURL: "http://127.0.0.1/", SlowThreshold: -time.Second},
		{TargetURL: "http://127.0.0.1/", ExpectedStatus: []int{42}},
		{TargetURL: "http://127.0.0.1/", BanStatusCodes: []int{1000}},
		{TargetURL: "%zz"},
	} {
		if _, err := NewChecker(opts); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("NewChecker(%+v) = %v, want ErrInvalidArgument", opts, err)
		}
	}
	c, err := NewChecker(CheckerOptions{TargetURL: "http://127.0.0.1/"})
	if err != nil {
		t.Fatal(err)
	}
	o := c.Options()
	if o.Timeout != DefaultTimeout || len(o.BanStatusCodes) != 1 || o.BanStatusCodes[0] != 429 {
		t.Fatalf("defaults not applied: %+v", o)
	}
}

func TestCheckerNilProxy(t *testing.T) {
	c := newTestChecker(t, CheckerOptions{TargetURL: "http://127.0.0.1/"})
	if r := c.Probe(context.Background(), nil); r.Kind != KindInvalid {
		t.Fatalf("nil proxy = %q", r.Kind)
	}
}

func TestCheckerInsecureSkipVerify(t *testing.T) {
	tg := newTarget(t)
	httpsProxy := proxyAt(t, startHTTPProxy(t, testpeers.HTTPOptions{TLS: true}), pharox.ProtocolHTTPS, testpeers.Alice())
	verify := newTestChecker(t, CheckerOptions{TargetURL: tg.TLS.URL})
	if r := verify.Probe(context.Background(), httpsProxy); r.Kind != KindTLS {
		t.Fatalf("verifying probe = %s (%v), want tls", r.Kind, r.Err)
	}
	insecure := newTestChecker(t, CheckerOptions{TargetURL: tg.TLS.URL, InsecureSkipVerify: true})
	if r := insecure.Probe(context.Background(), httpsProxy); !r.OK() {
		t.Fatalf("insecure probe = %s (%v), want success", r.Kind, r.Err)
	}
}
