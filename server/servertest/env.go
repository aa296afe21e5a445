// Package servertest is the HTTP service's contract suite: it runs the wire
// contract of the pharox service, case by case, against a real listener on
// loopback over any store. Its Python SDK cases (python_sdk.go) send the
// requests of the Python pharox SDK's remote mode exactly and read the
// answers as that SDK does. A store package runs it with one line:
//
//	func TestServer(t *testing.T) {
//		servertest.Run(t, func(t *testing.T) pharox.Storage {
//			s, err := memory.New()
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		})
//	}
package servertest

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/server"
)

// Keys the suite's servers accept.
const (
	AdminKey    = "test-admin-key-7f3a9c2e51b8"
	ConsumerKey = "test-consumer-key-0d6e4b19a7c3"
)

// NewStore returns a fresh, empty store; register cleanup with t.Cleanup.
type NewStore func(t *testing.T) pharox.Storage

// Env is one server over one fresh store, listening on loopback.
type Env struct {
	T       testing.TB
	URL     string
	Client  *http.Client
	Server  *server.Server
	Manager *pharox.Manager
	Store   pharox.Storage
	// Logs holds everything the server logged (JSON lines).
	Logs *SyncBuffer
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// NewEnv starts a server over store. configure, when not nil, adjusts the
// options before the server is built.
func NewEnv(t testing.TB, store pharox.Storage, configure func(*server.Options)) *Env {
	t.Helper()
	return newEnv(t, store, nil, configure)
}

// newEnv is NewEnv with more options for the Manager.
func newEnv(t testing.TB, store pharox.Storage, mopts []pharox.ManagerOption, configure func(*server.Options)) *Env {
	t.Helper()
	logs := &SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mgr := pharox.NewManager(store, append([]pharox.ManagerOption{pharox.WithLogger(logger)}, mopts...)...)
	opts := server.Options{
		AdminKeys:    []string{AdminKey},
		ConsumerKeys: []string{ConsumerKey},
		Logger:       logger,
		AccessLog:    true,
		ReapInterval: -1,
	}
	if configure != nil {
		configure(&opts)
	}
	srv := server.New(mgr, opts)
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
	})
	client := hs.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	client.Timeout = 30 * time.Second
	return &Env{T: t, URL: hs.URL, Client: client, Server: srv, Manager: mgr, Store: store, Logs: logs}
}

// Response is a buffered HTTP response.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Do sends a request with the API key (none when key is empty). body is
// sent as is when it is a string or []byte, else marshalled as JSON.
func (e *Env) Do(method, path, key string, body any) *Response {
	e.T.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.T.Fatalf("marshal request body: %v", err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.URL+path, rd)
	if err != nil {
		e.T.Fatalf("new request %s %s: %v", method, path, err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set(server.APIKeyHeader, key)
	}
	resp, err := e.Client.Do(req)
	if err != nil {
		e.T.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.T.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: raw}
}

// Admin and Consumer send a request with the admin or consumer key.
func (e *Env) Admin(method, path string, body any) *Response {
	e.T.Helper()
	return e.Do(method, path, AdminKey, body)
}

// Consumer sends a request with the consumer key.
func (e *Env) Consumer(method, path string, body any) *Response {
	e.T.Helper()
	return e.Do(method, path, ConsumerKey, body)
}

// Expect fails the test unless the response has the status; it returns the
// response for chaining.
func (r *Response) Expect(t testing.TB, status int) *Response {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d; body: %s", r.Status, status, r.Body)
	}
	return r
}

// Decode unmarshals the body into v.
func (r *Response) Decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %s: %v", r.Body, err)
	}
}

// Detail returns the error detail of the body ("" if none).
func (r *Response) Detail() string {
	var e api.Error
	_ = json.Unmarshal(r.Body, &e)
	return e.Detail
}

// Fields returns the body as a JSON object.
func (r *Response) Fields(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	r.Decode(t, &m)
	return m
}

// CreatePool creates a pool and returns it.
func (e *Env) CreatePool(name string) api.Pool {
	e.T.Helper()
	var p api.Pool
	e.Admin("POST", "/v1/pools/", api.CreatePoolRequest{Name: name}).Expect(e.T, 201).Decode(e.T, &p)
	return p
}

// AddProxy adds a proxy to a pool and returns it.
func (e *Env) AddProxy(pool api.Pool, req api.CreateProxyRequest) api.Proxy {
	e.T.Helper()
	var p api.Proxy
	e.Admin("POST", "/v1/pools/"+pool.ID.String()+"/proxies/", req).Expect(e.T, 201).Decode(e.T, &p)
	return p
}

// Acquire leases from the pool with the consumer key.
func (e *Env) Acquire(req api.AcquireRequest) api.Lease {
	e.T.Helper()
	var l api.Lease
	e.Consumer("POST", "/v1/leases/", req).Expect(e.T, 201).Decode(e.T, &l)
	return l
}
