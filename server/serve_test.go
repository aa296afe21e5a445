package server_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server"
)

func post(t *testing.T, url, key, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(server.APIKeyHeader, key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, raw
}

// TestServeGracefulShutdown starts Serve on a real listener with the
// background reaper, lets a lease expire, parks an acquisition waiting for
// a proxy, then cancels Serve's context: the waiting request still gets
// its 409 answer, Serve returns nil, and the port is closed.
func TestServeGracefulShutdown(t *testing.T) {
	ctx := context.Background()
	store := testfactory.Memory(t)
	pool, err := pharox.BootstrapPool(ctx, store, "main", "")
	if err != nil {
		t.Fatal(err)
	}
	one := 1
	if _, err := pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: "10.0.0.1", Port: 80, Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one}); err != nil {
		t.Fatal(err)
	}
	srv := server.New(pharox.NewManager(store), server.Options{
		ConsumerKeys: []string{"ck"}, Logger: slog.New(slog.DiscardHandler),
		ReapInterval: 20 * time.Millisecond, MaxWait: 20 * time.Second,
	})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner, accepted: make(chan struct{}, 16)}
	base := "http://" + ln.Addr().String()
	serveCtx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, ln) }()

	// The reaper reclaims an expired lease without anyone asking.
	resp, body := post(t, base+"/v1/leases/", "ck", `{"pool_name": "main", "ttl_seconds": 0.05}`)
	if resp.StatusCode != 201 {
		t.Fatalf("acquire: %d %s", resp.StatusCode, body)
	}
	var l api.Lease
	if err := json.Unmarshal(body, &l); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := store.GetLease(ctx, l.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status == pharox.LeaseExpired {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reaper did not reclaim the lease: %+v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Hold the only proxy, then park a waiting acquisition.
	if resp, body := post(t, base+"/v1/leases/", "ck", `{"pool_name": "main"}`); resp.StatusCode != 201 {
		t.Fatalf("acquire: %d %s", resp.StatusCode, body)
	}
	type answer struct {
		status int
		body   string
	}
	for len(ln.accepted) > 0 {
		<-ln.accepted
	}
	waiting := make(chan answer, 1)
	go func() {
		// A connection of its own, so the server accepts it anew.
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		req, _ := http.NewRequest("POST", base+"/v1/leases/", strings.NewReader(`{"pool_name": "main", "wait_seconds": 15}`))
		req.Header.Set(server.APIKeyHeader, "ck")
		resp, err := c.Do(req)
		if err != nil {
			waiting <- answer{0, err.Error()}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		waiting <- answer{resp.StatusCode, string(body)}
	}()
	// Once the server tracks its connection, shutdown waits for the
	// request (and a wait that starts after shutdown began ends at once).
	// The server tracks a connection just after Accept returns; a
	// connection accepted while shutdown begins is closed, as net/http
	// does, so give tracking a moment.
	select {
	case <-ln.accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting request never connected")
	}
	time.Sleep(100 * time.Millisecond)
	stop()
	select {
	case a := <-waiting:
		if a.status != 409 || !strings.Contains(a.body, "No proxy available") {
			t.Fatalf("waiting request got %d %s, want the 409 miss", a.status, a.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown did not end the waiting acquisition")
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after shutdown")
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("the listener still accepts connections after shutdown")
	}
}

// countingListener signals every accepted connection.
type countingListener struct {
	net.Listener
	accepted chan struct{}
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		select {
		case l.accepted <- struct{}{}:
		default:
		}
	}
	return c, err
}
