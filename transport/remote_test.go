package transport

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/internal/testpeers"
	"github.com/pharox/pharox/server"
)

// remoteLeaser starts a pharox server over the env's Manager and returns
// a Leaser through the Go client.
func (e *env) remoteLeaser() Leaser {
	e.t.Helper()
	srv := server.New(e.mgr, server.Options{ConsumerKeys: []string{"consumer-key"}, ReapInterval: -1, Logger: quietLogger()})
	hs := httptest.NewServer(srv)
	e.t.Cleanup(func() {
		srv.Close()
		hs.Close()
	})
	c, err := client.New(hs.URL, client.WithAPIKey("consumer-key"), client.WithHTTPClient(hs.Client()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(hs.Client().CloseIdleConnections)
	return Remote(c)
}

// TestRemote runs requests through a Transport that leases from a pharox
// service: rotation, a retry after a ban (the service cannot take a
// predicate, so the Transport holds the failed lease to move on), waiting
// for a busy pool, and every lease given back.
func TestRemote(t *testing.T) {
	testpeers.CheckLeaks(t)
	e := newEnv(t)
	policy := pharox.DefaultOutcomePolicy()
	policy.BanThreshold = 1000 // the banned proxy stays leasable
	e.mgr = pharox.NewManager(e.store, pharox.WithOutcomePolicy(policy))
	for _, ip := range []string{"127.0.1.1", "127.0.1.2"} {
		e.add(1, testpeers.Alice(), testpeers.StartHTTP(t, ip))
	}
	rt := e.transportWith(e.remoteLeaser(), WithStrategy(pharox.RoundRobin))
	c := &http.Client{Transport: rt}
	for range 4 {
		fetch(t, c, context.Background(), e.tg.TLS.URL)
	}
	if seen := e.tg.Seen(); len(slices.Compact(slices.Sorted(slices.Values(seen)))) != 2 {
		t.Fatalf("4 requests went through %v, want both upstreams", seen)
	}

	e.tg.Ban("127.0.1.1")
	for range 3 {
		if code, body := fetch(t, c, context.Background(), e.tg.TLS.URL); code != http.StatusOK || body != "hello from 127.0.1.2" {
			t.Fatalf("answer %d %q with one proxy banned by the target, want 200 through the other", code, body)
		}
	}
	states, err := e.mgr.TargetStates(context.Background(), e.proxy("127.0.1.1").ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 1 || states[0].LastStatusCode != http.StatusTooManyRequests || !states[0].CoolingAt(time.Now()) {
		t.Fatalf("banned proxy: per-site states %+v, want the ban reported for the site through the service", states)
	}
	e.noLeases()

	// Both proxies busy: the request waits through the service and gets
	// one when it frees, or fails with ErrNoProxyAvailable by its deadline.
	var held []*pharox.Lease
	for range 2 {
		l, err := e.mgr.Acquire(context.Background(), "main", nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	_, err = (&http.Client{Transport: rt, Timeout: 1500 * time.Millisecond}).Get(e.tg.TLS.URL)
	if !errors.Is(err, pharox.ErrNoProxyAvailable) {
		t.Fatalf("request to a busy pool through the service: %v, want ErrNoProxyAvailable", err)
	}
	// Free the proxy not cooling down for the target.
	if held[1].ProxyID != e.proxy("127.0.1.2").ID {
		held[0], held[1] = held[1], held[0]
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		e.mgr.Release(context.Background(), held[1].ID)
	}()
	if code, _ := fetch(t, &http.Client{Transport: rt, Timeout: 20 * time.Second}, context.Background(), e.tg.TLS.URL); code != http.StatusOK {
		t.Fatalf("answer %d once a proxy was freed, want 200", code)
	}
	e.mgr.Release(context.Background(), held[0].ID)
	e.noLeases()
}
