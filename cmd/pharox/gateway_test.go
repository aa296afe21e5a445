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

func TestGatewayCommandServesAndShutsDown(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "target says hi")
	}))
	defer target.Close()
	up := goproxy.NewProxyHttpServer()
	up.Logger = log.New(io.Discard, "", 0)
	upSrv := httptest.NewServer(up)
	defer upSrv.Close()

	store := testfactory.Memory(t)
	pool, err := store.CreatePool(context.Background(), pharox.Pool{Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	host, portStr, _ := net.SplitHostPort(upSrv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	if _, err := store.AddProxies(context.Background(), []pharox.Proxy{{PoolID: pool.ID, Host: host, Port: port, Protocol: pharox.ProtocolHTTP}}); err != nil {
		t.Fatal(err)
	}
	orig := gatewayOpenStorage
	gatewayOpenStorage = func(ctx context.Context, raw string) (pharox.Storage, error) { return store, nil }
	defer func() { gatewayOpenStorage = orig }()

	var logs bytes.Buffer
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan net.Addr, 1)
	done := make(chan error, 1)
	o := gatewayOptions{listen: "127.0.0.1:0", storage: "memory://", defaultPool: "main", password: "pw",
		consumer: "gateway", strategy: "round_robin", banStatuses: []int{429}, leaseDuration: time.Minute,
		dialTimeout: 5 * time.Second, shutdownTimeout: 5 * time.Second, accessLog: true, logFormat: "json", logLevel: "info"}
	go func() {
		done <- runGateway(ctx, o, gatewayLogWriter{&mu, &logs}, func(h, _ net.Addr) { addrs <- h })
	}()
	var addr net.Addr
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("gateway exited: %v", err)
	}
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr.String(), User: url.UserPassword("pool-main", "pw")})}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(target.URL + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "target says hi" {
		t.Fatalf("through the gateway: %d %q", resp.StatusCode, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("gateway exit: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if out := logs.String(); !strings.Contains(out, `"msg":"gateway request"`) || strings.Contains(out, `"pw"`) {
		t.Fatalf("logs: %s", out)
	}
}

func TestGatewayCommandNeedsOneLeaseSource(t *testing.T) {
	t.Setenv("PHAROX_SERVER", "")
	t.Setenv("PHAROX_STORAGE", "")
	for _, args := range [][]string{{}, {"--server", "http://x", "--storage", "memory://"}} {
		cmd := newGatewayCmd()
		cmd.SetArgs(args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		if err := cmd.ExecuteContext(context.Background()); err == nil {
			t.Fatalf("gateway %v ran", args)
		}
	}
}

type gatewayLogWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l gatewayLogWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
