package server_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/server/servertest"
)

// countingTransport counts the 503 answers to acquisitions.
type countingTransport struct {
	acquire503 atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && r.Method == http.MethodPost && r.URL.Path == "/v1/leases/" && resp.StatusCode == http.StatusServiceUnavailable {
		c.acquire503.Add(1)
	}
	return resp, err
}

// TestFaultPostgresRestartGoClient restarts PostgreSQL under 16 goroutines
// leasing through the Go client with its own retries: every call either
// succeeds or fails with ErrNoProxyAvailable or, if the outage outlasts
// its retries, ErrUnavailable; acquisitions answered 503 are retried (with
// their Idempotency-Key); and the store's records agree with what the
// clients got.
func TestFaultPostgresRestartGoClient(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	pg, storeURL := faultPostgres(t)
	poolID, proxies := faultSeed(t, storeURL)
	srv := mpStartChild(t, "server", storeURL)
	tr := &countingTransport{}
	c, err := client.New(srv.URL, client.WithAPIKey(servertest.ConsumerKey),
		client.WithHTTPClient(&http.Client{Transport: tr, Timeout: 30 * time.Second}),
		client.WithRetry(10, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	// The audit of faultLoad, fed by these clients.
	l := &faultLoad{t: t, poolID: poolID, holding: map[uuid.UUID]*atomic.Int32{}, statuses: map[string]int{},
		granted: map[uuid.UUID]uuid.UUID{}, releaseTried: map[uuid.UUID]bool{}, releasedOK: map[uuid.UUID]bool{},
		lostReleasesAllowed: false}
	for _, p := range proxies {
		l.holding[p.ID] = &atomic.Int32{}
	}
	var unavailable atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range faultClients {
		wg.Go(func() {
			ttl := faultTTL
			req := api.AcquireRequest{PoolID: poolID.String(), ConsumerName: fmt.Sprintf("go-client-%d", g), TTLSeconds: &ttl}
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				lease, err := c.Acquire(ctx, req)
				switch {
				case errors.Is(err, pharox.ErrNoProxyAvailable):
					cancel()
					time.Sleep(2 * time.Millisecond)
					continue
				case errors.Is(err, pharox.ErrUnavailable):
					cancel()
					unavailable.Add(1)
					continue
				case err != nil:
					cancel()
					l.defect("acquire: %v", err)
					continue
				}
				l.grant(api.Lease{ID: lease.ID, ProxyID: lease.ProxyID})
				time.Sleep(time.Millisecond)
				l.holding[lease.ProxyID].Add(-1)
				l.mu.Lock()
				l.releaseTried[lease.ID] = true
				l.mu.Unlock()
				_, err = c.Release(ctx, lease.ID)
				cancel()
				switch {
				case err == nil:
					l.mu.Lock()
					l.releasedOK[lease.ID] = true
					l.mu.Unlock()
				case errors.Is(err, pharox.ErrUnavailable):
					unavailable.Add(1)
				default:
					l.defect("release %s: %v", lease.ID, err)
				}
			}
		})
	}
	l.waitGrants(4*faultClients, time.Time{}, time.Minute)
	pg.Restart(2 * time.Second)
	l.waitGrants(4*faultClients, time.Now(), faultRecoveryLimit)
	close(stop)
	wg.Wait()
	if err := srv.Stop(); err != nil {
		t.Error(err)
	}
	t.Logf("Go client: %d leases granted, %d acquisitions answered 503 (and retried), %d calls failed with ErrUnavailable after their retries",
		len(l.granted), tr.acquire503.Load(), unavailable.Load())
	for _, d := range l.defects {
		t.Errorf("client: %s", d)
	}
	for _, o := range l.overleases {
		t.Errorf("over-lease seen by the clients: %s", o)
	}
	if n := tr.acquire503.Load(); n > 0 && unavailable.Load() >= n {
		t.Errorf("%d acquisitions answered 503 and %d calls failed with ErrUnavailable: the client did not retry acquisitions", n, unavailable.Load())
	}
	if t.Failed() {
		t.FailNow()
	}
	l.Audit(storeURL)
}
