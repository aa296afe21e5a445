package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server"
)

// baseGatewayOptions are the flag defaults of `pharox gateway`.
func baseGatewayOptions() gatewayOptions {
	return gatewayOptions{listen: "127.0.0.1:0", consumer: "gateway", strategy: "round_robin", banStatuses: []int{429},
		leaseDuration: time.Minute, dialTimeout: 5 * time.Second, shutdownTimeout: 5 * time.Second,
		idleTimeout: 5 * time.Minute, maxConns: 100, responseHeaderTimeout: time.Minute,
		accessLog: true, logFormat: "json", logLevel: "info"}
}

// runGatewayCmd runs `pharox gateway args` until it exits or is listening
// (then it is stopped) and returns its error.
func runGatewayCmd(t *testing.T, args ...string) error {
	t.Helper()
	cmd := newGatewayCmd()
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return cmd.ExecuteContext(ctx)
}

// --user without --password accepted any password while logging
// auth=true; it is refused now, by the CLI and by gateway.New.
func TestGatewayUserNeedsPassword(t *testing.T) {
	t.Setenv("PHAROX_GATEWAY_PASSWORD", "")
	err := runGatewayCmd(t, "--storage", "memory://", "--user", "acme")
	if err == nil || !strings.Contains(err.Error(), "--user needs --password") {
		t.Fatalf("gateway --user without --password: %v", err)
	}
}

// Listening beyond loopback without a password needs --allow-open.
func TestGatewayOpenListenerNeedsAllowOpen(t *testing.T) {
	t.Setenv("PHAROX_GATEWAY_PASSWORD", "")
	for _, addr := range []string{":8081", "0.0.0.0:8081", "[::]:8081", "10.1.2.3:8081", "proxy.example:8081"} {
		for _, flag := range []string{"--listen", "--socks-listen"} {
			err := runGatewayCmd(t, "--storage", "memory://", flag, addr)
			if err == nil || !strings.Contains(err.Error(), "--allow-open") {
				t.Fatalf("gateway %s %s without auth: %v, want a refusal naming --allow-open", flag, addr, err)
			}
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "[::1]:0", "127.0.0.9:0"} {
		if !loopbackAddr(addr) {
			t.Errorf("%s not taken for loopback", addr)
		}
	}
	// With --allow-open it gets past that, to the check of its pool.
	err := runGatewayCmd(t, "--storage", "memory://", "--listen", ":0", "--allow-open", "--default-pool", "none")
	if err == nil || !strings.Contains(err.Error(), `default pool "none" does not exist`) {
		t.Fatalf("gateway --allow-open: %v, want it to reach the pool check", err)
	}
}

// A gateway that cannot work exits at once with one line saying why;
// before, it logged "listening" and failed every request.
func TestGatewayFailsFastOnBadConfig(t *testing.T) {
	store := testfactory.Memory(t)
	defer store.Close()
	if _, err := store.CreatePool(context.Background(), pharox.Pool{Name: "main"}); err != nil {
		t.Fatal(err)
	}
	srv := server.New(pharox.NewManager(store), server.Options{ConsumerKeys: []string{"good-key"}, ReapInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	orig := gatewayOpenStorage
	gatewayOpenStorage = func(context.Context, string) (pharox.Storage, error) { return checkNopClose{store}, nil }
	defer func() { gatewayOpenStorage = orig }()

	for _, tc := range []struct {
		name string
		set  func(*gatewayOptions)
		want string
	}{
		{"wrong key", func(o *gatewayOptions) { o.server, o.apiKey = hs.URL, "bad-key" }, "refused the API key"},
		{"no key", func(o *gatewayOptions) { o.server = hs.URL }, "refused the API key"},
		{"unreachable server", func(o *gatewayOptions) { o.server, o.apiKey = closed, "good-key" }, "does not answer"},
		{"unknown default pool over a server", func(o *gatewayOptions) { o.server, o.apiKey, o.defaultPool = hs.URL, "good-key", "mian" }, `default pool "mian" does not exist`},
		{"unknown default pool in a store", func(o *gatewayOptions) { o.storage, o.defaultPool = "memory://", "mian" }, `default pool "mian" does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := baseGatewayOptions()
			tc.set(&o)
			listening := false
			err := runGateway(context.Background(), o, io.Discard, func(net.Addr, net.Addr) { listening = true })
			if err == nil || listening {
				t.Fatalf("gateway started (listening %v, err %v)", listening, err)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
				t.Fatalf("error %q, want one line mentioning %q", msg, tc.want)
			}
			// A server that is down for now exits 75 like every other
			// command (it exited 1: the check's message dropped the cause).
			if want := map[bool]int{true: exitUnavailable, false: exitFailure}[tc.name == "unreachable server"]; exitCode(err) != want {
				t.Fatalf("exit code %d for %q, want %d", exitCode(err), err, want)
			}
		})
	}

	// The same check answers /readyz on the metrics listener.
	o := baseGatewayOptions()
	o.server, o.apiKey, o.defaultPool, o.metricsListen, o.password = hs.URL, "good-key", "main", "127.0.0.1:0", "pw"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	var metricsAddr string
	origListen := gatewayListenHook
	gatewayListenHook = func(name string, ln net.Listener) {
		if name == "metrics" {
			metricsAddr = ln.Addr().String()
		}
	}
	defer func() { gatewayListenHook = origListen }()
	go func() { done <- runGateway(ctx, o, io.Discard, func(net.Addr, net.Addr) { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("gateway exited: %v", err)
	}
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz with everything in place: %d %s", code, body)
	}
	p, _ := store.GetPoolByName(context.Background(), "main")
	if err := store.DeletePool(context.Background(), p.ID); err != nil {
		t.Fatal(err)
	}
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, `default pool "main" does not exist`) {
		t.Fatalf("/readyz after the default pool was deleted: %d %s", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
