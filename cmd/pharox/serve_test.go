package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

type serveOutput struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *serveOutput) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *serveOutput) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestServeGeneratesKeyAndServes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr serveOutput
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	cfg := serveConfig{Listen: "127.0.0.1:0", Storage: "memory://", ConsumerKeys: []string{"consumer-key-123"},
		ReapInterval: serveDuration{time.Second}, MaxWait: serveDuration{5 * time.Second}, LogFormat: "json", LogLevel: "info"}
	go func() { done <- runServe(ctx, cfg, &stdout, &stderr, func(a net.Addr) { addrc <- a }) }()
	var addr net.Addr
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("serve ended early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not start")
	}
	out := stdout.String()
	if !strings.Contains(out, "serving on http://"+addr.String()) {
		t.Fatalf("stdout does not say where it listens:\n%s", out)
	}
	key := regexp.MustCompile(`phx_[A-Za-z0-9_-]{43}`).FindString(out)
	if key == "" {
		t.Fatalf("no generated admin key on stdout:\n%s", out)
	}
	do := func(method, path, key, body string) int {
		req, _ := http.NewRequest(method, "http://"+addr.String()+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := do("POST", "/v1/pools/", key, `{"name": "main"}`); s != 201 {
		t.Fatalf("create pool with the generated key: %d", s)
	}
	if s := do("GET", "/v1/pools/", "consumer-key-123", ""); s != 200 {
		t.Fatalf("consumer key: %d", s)
	}
	if s := do("POST", "/v1/pools/", "consumer-key-123", `{"name": "x"}`); s != 403 {
		t.Fatalf("consumer creating a pool: %d", s)
	}
	if s := do("GET", "/readyz", "", ""); s != 200 {
		t.Fatalf("readyz: %d", s)
	}
	if s := do("POST", "/v1/pools/main/health-check", key, `{}`); s != 422 {
		t.Fatalf("health check without a target: %d, want 422", s)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop")
	}
	logs := stderr.String()
	if !strings.Contains(logs, `"route":"/v1/pools/"`) {
		t.Fatalf("no access log:\n%s", logs)
	}
	if strings.Contains(logs, key) || strings.Contains(logs, "consumer-key-123") {
		t.Fatalf("a key leaked into the logs:\n%s", logs)
	}
}

func TestServeConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pharox.json")
	if err := os.WriteFile(path, []byte(`{"listen": "127.0.0.1:9999", "storage": "memory://",
		"admin_keys": ["file-admin"], "consumer_keys": ["file-consumer"], "sweep_interval": "5m",
		"lease_retention": "1h", "access_log": false}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg serveConfig
	if err := loadServeConfig(path, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:9999" || cfg.SweepInterval.Duration != 5*time.Minute ||
		cfg.LeaseRetention.Duration != time.Hour || cfg.AccessLog == nil || *cfg.AccessLog ||
		len(cfg.AdminKeys) != 1 || cfg.AdminKeys[0] != "file-admin" {
		t.Fatalf("config file: %+v", cfg)
	}
	t.Setenv("PHAROX_LISTEN", "127.0.0.1:7777")
	t.Setenv("PHAROX_CONSUMER_KEYS", "env-a, env-b")
	t.Setenv("PHAROX_LEASE_RETENTION", "2h")
	if err := applyServeEnv(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7777" || len(cfg.ConsumerKeys) != 2 || cfg.ConsumerKeys[1] != "env-b" ||
		cfg.LeaseRetention.Duration != 2*time.Hour || cfg.AdminKeys[0] != "file-admin" {
		t.Fatalf("after env: %+v", cfg)
	}
	t.Setenv("PHAROX_SWEEP_INTERVAL", "soon")
	if err := applyServeEnv(&cfg); err == nil {
		t.Fatal("a bad serveDuration in the environment must fail")
	}
	if err := os.WriteFile(path, []byte(`{"listen": "x", "colour": "blue"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := loadServeConfig(path, &cfg); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Fatalf("unknown config field: %v", err)
	}
}

// --usage-retention comes from the config file, then the environment.
func TestServeUsageRetentionConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pharox.json")
	if err := os.WriteFile(path, []byte(`{"usage_retention": "720h"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg serveConfig
	if err := loadServeConfig(path, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.UsageRetention.Duration != 720*time.Hour {
		t.Fatalf("usage_retention from the file = %v", cfg.UsageRetention.Duration)
	}
	t.Setenv("PHAROX_USAGE_RETENTION", "-1s")
	if err := applyServeEnv(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.UsageRetention.Duration != -time.Second {
		t.Fatalf("usage retention from PHAROX_USAGE_RETENTION = %v", cfg.UsageRetention.Duration)
	}
	out, err := runRoot(t, "serve", "--help")
	if err != nil || !strings.Contains(out, "--usage-retention duration") || !strings.Contains(out, "2160h0m0s") {
		t.Fatalf("serve --help: %v\n%s", err, out)
	}
}
