package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
)

// TestOpenAPIMatchesMux checks both directions between the route table,
// the mux and the document: every route is registered under its own
// pattern, and the document lists exactly the table's operations.
func TestOpenAPIMatchesMux(t *testing.T) {
	s := New(pharox.NewManager(testfactory.Memory(t)), Options{DisableAuth: true})
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(s.OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	ops := 0
	for _, m := range doc.Paths {
		ops += len(m)
	}
	if ops != len(s.routes) {
		t.Fatalf("document has %d operations, table %d routes", ops, len(s.routes))
	}
	for _, rt := range s.routes {
		if _, ok := doc.Paths[rt.Path][strings.ToLower(rt.Method)]; !ok {
			t.Errorf("route %s %s is not in the document", rt.Method, rt.Path)
		}
		path := strings.NewReplacer("{pool_id}", "p", "{proxy_id}", "x", "{lease_id}", "l").Replace(rt.Path)
		req := httptest.NewRequest(rt.Method, path, nil)
		if _, pattern := s.mux.Handler(req); pattern != rt.pattern() {
			t.Errorf("%s %s is served by %q, want %q", rt.Method, path, pattern, rt.pattern())
		}
	}
}

// TestErrorStatusNever500ForSentinels checks the one mapping table.
func TestErrorStatusNever500ForSentinels(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
	}{
		{pharox.ErrNoProxyAvailable, 409},
		{pharox.ErrPoolNotFound, 404},
		{pharox.ErrProxyNotFound, 404},
		{pharox.ErrLeaseNotFound, 404},
		{pharox.ErrConsumerNotFound, 404},
		{pharox.ErrAlreadyExists, 409},
		{pharox.ErrInUse, 409},
		{pharox.ErrLeaseNotActive, 409},
		{pharox.ErrInvalidArgument, 422},
		{&http.MaxBytesError{Limit: 10}, 413},
	} {
		status, detail, internal := errorStatus(tc.err)
		if status != tc.status || internal || detail == "" {
			t.Errorf("%v: %d %q internal=%v, want %d", tc.err, status, detail, internal, tc.status)
		}
	}
	if status, detail, internal := errorStatus(errSecret); status != 500 || !internal || strings.Contains(detail, "secret") {
		t.Errorf("unknown error: %d %q %v", status, detail, internal)
	}
}

var errSecret = &json.UnsupportedValueError{Str: "secret stuff"}

func TestDisableAuth(t *testing.T) {
	s := New(pharox.NewManager(testfactory.Memory(t)), Options{DisableAuth: true})
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest("GET", "/v1/pools/", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("without auth: %d %s", w.Code, w.Body)
	}
	noKeys := New(pharox.NewManager(testfactory.Memory(t)), Options{})
	w = httptest.NewRecorder()
	noKeys.ServeHTTP(w, httptest.NewRequest("GET", "/v1/pools/", nil))
	if w.Code != http.StatusUnauthorized {
		t.Fatalf("no keys configured: %d, want 401", w.Code)
	}
}
