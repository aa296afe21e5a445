package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/observe"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/storage/open"
)

// logBuffer collects the server's JSON log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var (
	// layerPrefix is a package or driver name in front of a message.
	layerPrefix = regexp.MustCompile(`(?i)\b(pharox|sqlite|memory|postgres|redis|client|server|storage):`)
	uuidRE      = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
)

// TestErrorDetailsAreOneCleanSentence drives the mistakes a user makes
// against a real server and checks each detail: one sentence, no driver
// or package prefixes, no stutter, naming things as the user named them;
// and that none of them is logged at ERROR.
func TestErrorDetailsAreOneCleanSentence(t *testing.T) {
	stores := map[string]func(t *testing.T) pharox.Storage{
		"memory": func(t *testing.T) pharox.Storage { return testfactory.Memory(t) },
		"sqlite": func(t *testing.T) pharox.Storage {
			s, err := open.Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "pharox.db"))
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
	for name, newStore := range stores {
		t.Run(name, func(t *testing.T) {
			store := newStore(t)
			t.Cleanup(func() { store.Close() })
			var logs logBuffer
			logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			// The Manager logs as `pharox serve` has it log.
			mgr := pharox.NewManager(store, append(observe.Logging(logger, 1), pharox.WithLogger(logger))...)
			srv := server.New(mgr, server.Options{AdminKeys: []string{"admin"}, ReapInterval: -1, Logger: logger})
			hs := httptest.NewServer(srv)
			t.Cleanup(func() { srv.Close(); hs.Close() })
			call := func(method, path, body string) (int, map[string]any) {
				t.Helper()
				req, _ := http.NewRequest(method, hs.URL+path, strings.NewReader(body))
				req.Header.Set("X-API-Key", "admin")
				req.Header.Set("Content-Type", "application/json")
				resp, err := hs.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				raw, _ := io.ReadAll(resp.Body)
				var out map[string]any
				json.Unmarshal(raw, &out)
				return resp.StatusCode, out
			}
			if s, _ := call("POST", "/v1/pools/", `{"name":"main"}`); s != 201 {
				t.Fatalf("create pool: %d", s)
			}
			_, pool := call("GET", "/v1/pools/main", "")
			poolID := pool["id"].(string)
			s, proxy := call("POST", "/v1/pools/"+poolID+"/proxies/", `{"host":"10.0.0.1","port":8080,"protocol":"http"}`)
			if s != 201 {
				t.Fatalf("create proxy: %d", s)
			}
			proxyID := proxy["id"].(string)
			_, lease := call("POST", "/v1/leases/", `{"pool_name":"main","ttl_seconds":60}`)
			leaseID, _ := lease["id"].(string)
			if leaseID == "" {
				t.Fatalf("acquire: %v", lease)
			}

			for _, tc := range []struct {
				name, method, path, body string
				status                   int
				mention                  string // the user's name for the thing
			}{
				{"duplicate pool", "POST", "/v1/pools/", `{"name":"main"}`, 409, `"main"`},
				{"pool in use", "DELETE", "/v1/pools/main", ``, 409, `"main"`},
				{"duplicate proxy", "POST", "/v1/pools/" + poolID + "/proxies/", `{"host":"10.0.0.1","port":8080,"protocol":"http"}`, 409, "10.0.0.1:8080"},
				{"import of a proxy in the pool", "POST", "/v1/pools/main/proxies/import", `{"proxies":[{"host":"10.0.0.9","port":1,"protocol":"http"},{"host":"10.0.0.1","port":8080,"protocol":"http"}]}`, 409, "proxies[1] (http://10.0.0.1:8080)"},
				{"import repeating a proxy", "POST", "/v1/pools/main/proxies/import", `{"proxies":[{"host":"10.0.0.9","port":1,"protocol":"http"},{"host":"10.0.0.9","port":1,"protocol":"http"}]}`, 409, "proxies[1] repeats proxies[0]"},
				{"import of a bad proxy", "POST", "/v1/pools/main/proxies/import", `{"proxies":[{"host":"10.0.0.9","port":1,"protocol":"http"},{"host":"10.0.0.8","port":0,"protocol":"http"}]}`, 422, "proxies[1]"},
				{"body not an object", "POST", "/v1/pools/", `[]`, 422, "object"},
				{"empty pool name", "POST", "/v1/pools/", `{"name":"  "}`, 422, "name"},
				{"bad protocol", "POST", "/v1/pools/" + poolID + "/proxies/", `{"host":"10.0.0.2","port":8080,"protocol":"gopher"}`, 422, "gopher"},
				{"renew with zero ttl", "POST", "/v1/leases/" + leaseID + "/renew", `{"ttl_seconds":0}`, 422, "ttl_seconds"},
				{"unknown pool", "POST", "/v1/leases/", `{"pool_name":"mian"}`, 404, ""},
				{"proxy in use", "DELETE", "/v1/pools/main/proxies/" + proxyID, ``, 409, "10.0.0.1:8080"},
				{"release", "POST", "/v1/leases/" + leaseID + "/release", `{}`, 200, ""},
				{"renew after release", "POST", "/v1/leases/" + leaseID + "/renew", `{"ttl_seconds":60}`, 409, leaseID},
			} {
				status, body := call(tc.method, tc.path, tc.body)
				if status != tc.status {
					t.Errorf("%s: status %d %v, want %d", tc.name, status, body, tc.status)
					continue
				}
				if status < 400 {
					continue
				}
				detail, _ := body["detail"].(string)
				problems := detailProblems(detail)
				if tc.mention != "" && !strings.Contains(detail, tc.mention) {
					problems = append(problems, "does not name "+tc.mention)
				}
				if ids := uuidRE.FindAllString(detail, -1); len(ids) > 0 && !strings.Contains(tc.path+tc.body, ids[0]) {
					problems = append(problems, "holds an id the user never gave")
				}
				if len(problems) > 0 {
					t.Errorf("%s: detail %q: %s", tc.name, detail, strings.Join(problems, "; "))
				}
			}
			// Releasing twice answers 200 (the release stands) or 409 with
			// one clean sentence, never the stores' chain of layers.
			if status, body := call("POST", "/v1/leases/"+leaseID+"/release", `{}`); status != 200 {
				if detail, _ := body["detail"].(string); status != 409 || len(detailProblems(detail)) > 0 {
					t.Errorf("second release: %d %q %v", status, detail, detailProblems(detail))
				}
			}
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, `"level":"ERROR"`) {
					t.Errorf("a client mistake was logged at ERROR: %s", line)
				}
			}
		})
	}
}

// detailProblems lists what keeps detail from being one clean sentence.
func detailProblems(detail string) []string {
	var p []string
	if detail == "" {
		return []string{"empty"}
	}
	if m := layerPrefix.FindString(detail); m != "" {
		p = append(p, "carries the prefix "+m)
	}
	words := strings.Fields(strings.ToLower(strings.Trim(detail, ".")))
	for i := 1; i < len(words); i++ {
		if words[i] == words[i-1] {
			p = append(p, "doubles "+words[i])
		}
		if isArticle(words[i]) && i >= 2 && isArticle(words[i-2]) {
			p = append(p, "two articles in "+words[i-2]+" "+words[i-1]+" "+words[i])
		}
	}
	if strings.Count(detail, ": ") > 1 {
		p = append(p, "chains several messages")
	}
	return p
}

func isArticle(w string) bool { return w == "a" || w == "an" || w == "the" }

// TestErrorDetailsAreReadableRaw reads answers as curl shows them: the
// characters a detail quotes or states (a pool named "R&D", "radius_km ...
// >= 0") appear as written, not HTML-escaped as \u0026 and \u003e.
func TestErrorDetailsAreReadableRaw(t *testing.T) {
	srv := server.New(pharox.NewManager(testfactory.Memory(t)), server.Options{AdminKeys: []string{"admin"}, ReapInterval: -1})
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); hs.Close() })
	raw := func(method, path, body string) string {
		t.Helper()
		req, _ := http.NewRequest(method, hs.URL+path, strings.NewReader(body))
		req.Header.Set("X-API-Key", "admin")
		req.Header.Set("Content-Type", "application/json")
		resp, err := hs.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	raw("POST", "/v1/pools/", `{"name":"R&D"}`)
	for _, tc := range []struct{ name, method, path, body, want string }{
		{"duplicate pool", "POST", "/v1/pools/", `{"name":"R&D"}`, `R&D`},
		{"negative radius", "POST", "/v1/leases/", `{"pool_name":"R&D","filters":{"latitude":1,"longitude":2,"radius_km":-5}}`, `>=`},
	} {
		if got := raw(tc.method, tc.path, tc.body); !strings.Contains(got, tc.want) || strings.Contains(got, `\u00`) {
			t.Errorf("%s: body %s, want %s as written", tc.name, strings.TrimSpace(got), tc.want)
		}
	}
}
