package transport

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testpeers"
)

func response(code int, header http.Header, body string) *http.Response {
	if header == nil {
		header = http.Header{}
	}
	return &http.Response{StatusCode: code, Header: header, Body: io.NopCloser(strings.NewReader(body))}
}

func TestDefaultClassifier(t *testing.T) {
	cases := []struct {
		name string
		resp *http.Response
		want pharox.OutcomeKind
	}{
		{"200", response(200, nil, "ok"), pharox.OutcomeSuccess},
		{"404", response(404, nil, "not found"), pharox.OutcomeSuccess},
		{"407 proxy auth", response(407, nil, ""), pharox.OutcomeFailure},
		{"429 rate limit", response(429, nil, "slow down"), pharox.OutcomeBanned},
		{"plain 403", response(403, nil, "you may not see this page"), pharox.OutcomeSuccess},
		{"403 captcha page", response(403, nil, "<html>Please solve the CAPTCHA</html>"), pharox.OutcomeBanned},
		{"403 access denied", response(403, nil, "<h1>Access Denied</h1> reference #18"), pharox.OutcomeBanned},
		{"403 Cloudflare challenge header", response(403, http.Header{"Cf-Mitigated": {"challenge"}}, ""), pharox.OutcomeBanned},
		{"503 DataDome", response(503, http.Header{"X-Datadome": {"protected"}}, ""), pharox.OutcomeBanned},
		{"plain 503", response(503, nil, "maintenance"), pharox.OutcomeSuccess},
		{"200 mentioning captcha", response(200, nil, "captcha"), pharox.OutcomeSuccess},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultClassifier(tc.resp)
			if o.Kind != tc.want {
				t.Fatalf("kind %q (%q), want %q", o.Kind, o.Reason, tc.want)
			}
			if o.StatusCode != tc.resp.StatusCode {
				t.Fatalf("status %d, want %d", o.StatusCode, tc.resp.StatusCode)
			}
			if o.Kind != pharox.OutcomeSuccess && o.Reason == "" {
				t.Fatal("no reason for a failure or ban")
			}
		})
	}
}

// TestPeekBodyKeepsBody checks that the body reads the same after a peek,
// also when the peek covers all of it.
func TestPeekBodyKeepsBody(t *testing.T) {
	for _, body := range []string{"", "short", strings.Repeat("x", 10000)} {
		resp := response(403, nil, body)
		head, err := PeekBody(resp, 4096)
		if err != nil {
			t.Fatal(err)
		}
		if want := body[:min(len(body), 4096)]; string(head) != want {
			t.Fatalf("peek %d bytes, want %d", len(head), len(want))
		}
		again, _ := PeekBody(resp, 100)
		if string(again) != body[:min(len(body), 100)] {
			t.Fatalf("second peek %q", again)
		}
		all, err := io.ReadAll(resp.Body)
		if err != nil || string(all) != body {
			t.Fatalf("body after peeking: %d bytes, %v; want %d", len(all), err, len(body))
		}
	}
}

// TestCustomClassifier checks that a caller's classifier decides, that its
// ban is retried on another proxy, and that it can fall back on the default.
func TestCustomClassifier(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	for _, ip := range []string{"127.0.1.1", "127.0.1.2"} {
		e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, ip))
	}
	// The site answers 200 with a soft block for the first proxy.
	soft := func(resp *http.Response) pharox.Outcome {
		if resp.Header.Get("X-Seen-From") == "127.0.1.1" {
			return pharox.Outcome{Kind: pharox.OutcomeBanned, Reason: "soft block"}
		}
		return DefaultClassifier(resp)
	}
	rt := e.transport(WithClassifier(soft), WithStrategy(pharox.RoundRobin))
	c := &http.Client{Transport: rt}
	for range 3 {
		if code, body := fetch(t, c, context.Background(), e.tg.TLS.URL); code != 200 || body != "hello from 127.0.1.2" {
			t.Fatalf("answer %d %q, want 200 through the proxy the classifier accepts", code, body)
		}
	}
	// The ban counts for the site (see target_test.go).
	states, err := e.mgr.TargetStates(context.Background(), e.proxy("127.0.1.1").ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 1 || states[0].LastReason != "soft block" || states[0].LastStatusCode != http.StatusOK {
		t.Fatalf("soft-blocked proxy: per-site states %+v; want the classifier's reason and the 200", states)
	}
	e.noLeases()
}

// TestOptionsValidated checks that bad options fail New with one clear
// sentence naming the option.
func TestOptionsValidated(t *testing.T) {
	e := newEnv(t)
	l := Local(e.mgr)
	cases := []struct {
		name string
		new  func() (*Transport, error)
		want string
	}{
		{"nil leaser", func() (*Transport, error) { return New(nil, "main") }, "leaser is nil"},
		{"empty pool", func() (*Transport, error) { return New(l, "") }, "pool name"},
		{"negative lease duration", func() (*Transport, error) { return New(l, "main", WithLeaseDuration(-1)) }, "lease duration"},
		{"unknown strategy", func() (*Transport, error) { return New(l, "main", WithStrategy("fastest")) }, `unknown strategy "fastest"`},
		{"negative retries", func() (*Transport, error) { return New(l, "main", WithMaxRetries(-1)) }, "max retries"},
		{"negative wait", func() (*Transport, error) { return New(l, "main", WithMaxWait(-time.Second)) }, "max wait"},
		{"nil classifier", func() (*Transport, error) { return New(l, "main", WithClassifier(nil)) }, "classifier is nil"},
		{"zero proxy transports", func() (*Transport, error) { return New(l, "main", WithMaxProxyTransports(0)) }, "max proxy transports"},
		{"bad filters", func() (*Transport, error) {
			return New(l, "main", WithFilters(&pharox.Filters{Latitude: ptrutil.Ptr(100.0), Longitude: ptrutil.Ptr(0.0)}))
		}, "latitude"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.new()
			if !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrInvalidArgument naming %q", err, tc.want)
			}
		})
	}
}

// TestClassifierPanicReleasesLease checks that a classifier's panic
// reaches the caller without keeping the lease.
func TestClassifierPanicReleasesLease(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	e.add(0, testpeers.Alice(), testpeers.StartHTTP(t, "127.0.1.1"))
	rt := e.transport(WithClassifier(func(*http.Response) pharox.Outcome { panic("classifier bug") }))
	func() {
		defer func() {
			if p := recover(); p != "classifier bug" {
				t.Fatalf("recovered %v, want the classifier's panic", p)
			}
		}()
		req, _ := http.NewRequest(http.MethodGet, e.tg.Plain.URL, nil)
		rt.RoundTrip(req)
	}()
	e.noLeases()
}
