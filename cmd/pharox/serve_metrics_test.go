package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startServe runs serve over memory:// with the given flags set and
// returns its address; it stops when the test ends.
func startServe(t *testing.T, adjust func(*serveConfig)) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr serveOutput
	cfg := serveConfig{Listen: "127.0.0.1:0", Storage: "memory://", AdminKeys: []string{"admin-key-123"},
		ConsumerKeys: []string{"consumer-key-123"}, ReapInterval: serveDuration{time.Second},
		MaxWait: serveDuration{5 * time.Second}, LogFormat: "json", LogLevel: "warn"}
	if adjust != nil {
		adjust(&cfg)
	}
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, cfg, &stdout, &stderr, func(a net.Addr) { addrc <- a }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("serve did not stop")
		}
	})
	select {
	case a := <-addrc:
		return "http://" + a.String()
	case err := <-done:
		t.Fatalf("serve ended early: %v\n%s", err, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not start")
	}
	return ""
}

// serveDo sends one request and returns the status and body.
func serveDo(t *testing.T, method, url, key, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServeMetricsNeedAKeyAndOmitConsumers: by default /metrics needs a
// key and carries no consumer names, so acquisitions under many names add
// no series; --metrics-public and --metrics-consumer-labels change that.
func TestServeMetricsNeedAKeyAndOmitConsumers(t *testing.T) {
	acquireAs := func(base string, names int) {
		t.Helper()
		if s, b := serveDo(t, "POST", base+"/v1/pools/", "admin-key-123", `{"name": "main"}`); s != 201 {
			t.Fatalf("create pool: %d %s", s, b)
		}
		if s, b := serveDo(t, "POST", base+"/v1/pools/main/proxies/", "admin-key-123", `{"host": "10.40.0.1", "port": 80}`); s != 201 {
			t.Fatalf("add proxy: %d %s", s, b)
		}
		for i := range names {
			if s, b := serveDo(t, "POST", base+"/v1/leases/", "consumer-key-123", fmt.Sprintf(`{"pool_name": "main", "consumer_name": "scraper-%d"}`, i)); s != 201 {
				t.Fatalf("acquire as scraper-%d: %d %s", i, s, b)
			}
		}
	}
	t.Run("default", func(t *testing.T) {
		base := startServe(t, nil)
		if s, _ := serveDo(t, "GET", base+"/metrics", "", ""); s != 401 {
			t.Fatalf("/metrics without a key: %d, want 401", s)
		}
		acquireAs(base, 20)
		s, body := serveDo(t, "GET", base+"/metrics", "consumer-key-123", "")
		if s != 200 || !strings.Contains(body, "pharox_acquire_total") {
			t.Fatalf("/metrics with a consumer key: %d\n%s", s, body)
		}
		if strings.Contains(body, "scraper-") {
			t.Fatal("metrics carry consumer names without --metrics-consumer-labels")
		}
	})
	t.Run("public with consumer labels", func(t *testing.T) {
		yes := true
		base := startServe(t, func(c *serveConfig) { c.MetricsPublic, c.MetricsConsumerLabels = &yes, &yes })
		acquireAs(base, 2)
		s, body := serveDo(t, "GET", base+"/metrics", "", "")
		if s != 200 || !strings.Contains(body, `consumer="scraper-1"`) {
			t.Fatalf("/metrics public with consumer labels: %d\n%s", s, body)
		}
	})
	t.Run("consumers per key", func(t *testing.T) {
		two := 2
		base := startServe(t, func(c *serveConfig) { c.MaxConsumersPerKey = &two })
		acquireAs(base, 2)
		s, body := serveDo(t, "POST", base+"/v1/leases/", "consumer-key-123", `{"pool_name": "main", "consumer_name": "scraper-2"}`)
		if s != 403 || !strings.Contains(body, "--max-consumers-per-key") {
			t.Fatalf("a third consumer name with --max-consumers-per-key 2: %d %s", s, body)
		}
	})
}

func TestServeRefusesZeroConsumersPerKey(t *testing.T) {
	zero := 0
	cfg := serveConfig{Listen: "127.0.0.1:0", Storage: "memory://", AdminKeys: []string{"a"}, MaxConsumersPerKey: &zero,
		LogFormat: "text", LogLevel: "info"}
	err := runServe(context.Background(), cfg, io.Discard, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "--max-consumers-per-key") {
		t.Fatalf("serve with max consumers per key 0: %v", err)
	}
}
