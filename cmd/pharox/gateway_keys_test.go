package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
)

// TestGatewayCommandKeyAuth: with --key-auth the proxy password is an API
// key kept in the store; its lease goes to the key's consumer, a refused
// key gets 407, and no secret reaches the log.
func TestGatewayCommandKeyAuth(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "target says hi")
	}))
	defer target.Close()
	up := goproxy.NewProxyHttpServer()
	up.Logger = log.New(io.Discard, "", 0)
	upSrv := httptest.NewServer(up)
	defer upSrv.Close()

	ctx := context.Background()
	store := testfactory.Memory(t)
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	host, portStr, _ := net.SplitHostPort(upSrv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	if _, err := store.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: host, Port: port, Protocol: pharox.ProtocolHTTP}}); err != nil {
		t.Fatal(err)
	}
	secret, _ := pharox.NewAPIKeySecret()
	if _, err := store.CreateAPIKey(ctx, pharox.APIKey{Name: "scraper", Role: pharox.KeyRoleConsumer, Consumers: []string{"scraper-1"},
		Digest: pharox.APIKeyDigest(secret), Hint: pharox.APIKeyHint(secret)}); err != nil {
		t.Fatal(err)
	}
	orig := gatewayOpenStorage
	gatewayOpenStorage = func(ctx context.Context, raw string) (pharox.Storage, error) { return store, nil }
	defer func() { gatewayOpenStorage = orig }()

	var logs bytes.Buffer
	var mu sync.Mutex
	rctx, cancel := context.WithCancel(ctx)
	addrs := make(chan net.Addr, 1)
	done := make(chan error, 1)
	o := gatewayOptions{listen: "127.0.0.1:0", storage: "memory://", defaultPool: "main", keyAuth: true,
		consumer: "gateway", strategy: "round_robin", banStatuses: []int{429}, leaseDuration: time.Minute,
		dialTimeout: 5 * time.Second, shutdownTimeout: 5 * time.Second, accessLog: true, logFormat: "json", logLevel: "info"}
	go func() {
		done <- runGateway(rctx, o, gatewayLogWriter{&mu, &logs}, func(h, _ net.Addr) { addrs <- h })
	}()
	var addr net.Addr
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("gateway exited: %v", err)
	}
	get := func(pass string) (int, string) {
		tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr.String(), User: url.UserPassword("pool-main", pass)})}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(target.URL + "/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if status, body := get(secret); status != 200 || body != "target says hi" {
		t.Fatalf("with the key: %d %q", status, body)
	}
	if status, _ := get("phx_wrong"); status != http.StatusProxyAuthRequired {
		t.Fatalf("with a wrong key: %d, want 407", status)
	}
	leases, err := store.ListLeases(ctx, pharox.LeaseQuery{})
	if err != nil || len(leases) != 1 || leases[0].ConsumerName != "scraper-1" {
		t.Fatalf("leases %+v, %v: want one of scraper-1", leases, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("gateway exit: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if out := logs.String(); strings.Contains(out, secret) || !strings.Contains(out, `"key":"scraper"`) {
		t.Fatalf("logs show the secret or lack the key's name: %s", out)
	}
}
