package main

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/client"
)

// startServeForCheck runs `pharox serve` over a new SQLite file with admin
// key "adm" and the given default health target, holding pool "edge" with
// one working HTTP proxy (a real goproxy). It returns the server's URL.
func startServeForCheck(t *testing.T, healthTarget string) string {
	t.Helper()
	cfg := serveConfig{Listen: "127.0.0.1:0", Storage: "sqlite://" + filepath.Join(t.TempDir(), "pharox.db"),
		AdminKeys: []string{"adm"}, HealthTarget: healthTarget, ReapInterval: serveDuration{time.Second},
		MaxWait: serveDuration{5 * time.Second}, LogFormat: "json", LogLevel: "warn"}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, cfg, io.Discard, io.Discard, func(a net.Addr) { addrc <- a }) }()
	var addr net.Addr
	select {
	case addr = <-addrc:
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		<-done
	})
	base := "http://" + addr.String()
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = log.New(io.Discard, "", 0)
	px := httptest.NewServer(gp)
	t.Cleanup(px.Close)
	c, err := client.New(base, client.WithAPIKey("adm"))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := c.CreatePool(context.Background(), "edge", "")
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(px.Listener.Addr().String())
	n, _ := strconv.Atoi(port)
	if _, err := c.CreateProxy(context.Background(), pool.ID, &pharox.Proxy{Host: host, Port: n, Protocol: pharox.ProtocolHTTP}); err != nil {
		t.Fatal(err)
	}
	return base
}

// `pharox check --server` was an unknown flag: a store was the only way.
// The server now runs the sweep with its default target, or the one given.
func TestCheckThroughServer(t *testing.T) {
	t.Setenv(envServer, "")
	t.Setenv(envStorage, "")
	t.Setenv(envAPIKey, "")
	tgt := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer tgt.Close()
	withDefault := startServeForCheck(t, tgt.URL+"/")
	out, _, err := runCheckCmd(t, "--server", withDefault, "--api-key", "adm", "--pool", "edge")
	if err != nil {
		t.Fatalf("check --server: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "edge 1 0 1 0 0 0") {
		t.Fatalf("check --server table:\n%s", out)
	}
	out, _, err = runCheckCmd(t, "--server", withDefault, "--api-key", "adm", "--all", "--json")
	var res []api.SweepResult
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || len(res) != 1 || res[0].Checked != 1 {
		t.Fatalf("check --server --all --json: %v\n%s", err, out)
	}
	// PHAROX_SERVER alone chooses the server too.
	t.Setenv(envServer, withDefault)
	t.Setenv(envAPIKey, "adm")
	if _, _, err := runCheckCmd(t, "--pool", "edge"); err != nil {
		t.Fatalf("check with PHAROX_SERVER: %v", err)
	}
	t.Setenv(envServer, "")
	if _, _, err := runCheckCmd(t, "--server", withDefault, "--pool", "edge", "--concurrency", "5"); err == nil || !strings.Contains(err.Error(), "--concurrency") {
		t.Fatalf("a local tuning flag with --server: %v", err)
	}

	// A server without a default target asks for one, and takes it.
	without := startServeForCheck(t, "")
	if _, _, err := runCheckCmd(t, "--server", without, "--api-key", "adm", "--pool", "edge"); err == nil || !strings.Contains(err.Error(), "pass --target URL") {
		t.Fatalf("check --server against a server without a target: %v", err)
	}
	if _, _, err := runCheckCmd(t, "--server", without, "--api-key", "adm", "--pool", "edge", "--target", tgt.URL+"/"); err != nil {
		t.Fatalf("check --server --target: %v", err)
	}
	// The dashboard learns the default target, to ask for one where there is none.
	for base, want := range map[string]string{withDefault: tgt.URL + "/", without: ""} {
		req, _ := http.NewRequest("GET", base+"/v1/admin/dashboard", nil)
		req.Header.Set("X-API-Key", "adm")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			SweepEnabled bool   `json:"sweep_enabled"`
			SweepTarget  string `json:"sweep_target"`
		}
		json.NewDecoder(resp.Body).Decode(&d)
		resp.Body.Close()
		if !d.SweepEnabled || d.SweepTarget != want {
			t.Fatalf("dashboard of %s: %+v, want sweep target %q", base, d, want)
		}
	}
}

// `check --json` printed durations as raw nanoseconds under unitless
// names; they are milliseconds now, the unit in the field name.
func TestCheckJSONDurationsInMilliseconds(t *testing.T) {
	_, target := checkFixture(t)
	stdout, _, err := runCheckCmd(t, "--storage", "memory://test", "--pool", "edge", "--target", target, "--json", "--top", "3")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(stdout), &raw); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, stdout)
	}
	for _, gone := range []string{"duration", "latency"} {
		if _, ok := raw[gone]; ok {
			t.Errorf("field %q still there: %s", gone, stdout)
		}
	}
	d, ok := raw["duration_ms"].(float64)
	if !ok || d <= 0 || d > 60_000 {
		t.Fatalf("duration_ms = %v, want a sweep's milliseconds", raw["duration_ms"])
	}
	lat, _ := raw["latency_ms"].(map[string]any)
	if p50, ok := lat["p50_ms"].(float64); !ok || p50 <= 0 || p50 > 60_000 {
		t.Fatalf("latency_ms = %v, want p50_ms in milliseconds", raw["latency_ms"])
	}
	for _, list := range []string{"slowest", "failing"} {
		for _, r := range raw[list].([]any) {
			m := r.(map[string]any)
			if _, ok := m["latency"]; ok {
				t.Errorf("%s entry with a unitless latency: %v", list, m)
			}
			if _, ok := m["latency_ms"].(float64); !ok {
				t.Errorf("%s entry without latency_ms: %v", list, m)
			}
		}
	}
}
