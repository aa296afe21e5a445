package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/storagetest"
)

// Shape of the multi-process load: two server processes share one store;
// mpClients HTTP clients, half on each server, lease from one pool of
// mpProxies proxies of mpMaxConcurrency slots for mpDuration.
const (
	mpServers        = 2
	mpClients        = 32
	mpProxies        = 10
	mpMaxConcurrency = 2
	mpDuration       = 3 * time.Second
	// mpTTL is the lease length of leases the clients release: long
	// enough that a stalled client still releases in time.
	mpTTL = 5.0
	// mpAbandonTTL is the lease length of leases the clients abandon, to
	// be reclaimed by the servers' reapers or the final cleanup.
	mpAbandonTTL = 0.4
	// mpAbandonEvery: about one acquisition in this many is abandoned.
	mpAbandonEvery = 40
)

// TestMultiProcessPostgres checks that two service processes sharing one
// PostgreSQL schema never over-lease under concurrent load through HTTP.
func TestMultiProcessPostgres(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	base := backendPostgresURL(t)
	admin := backendPGAdmin(t, base)
	schema := backendNamespace("pharox_srvmp_")
	// The parent migrates the schema before the children open it.
	s := backendOpenPostgres(t, admin, base, schema)
	mpRun(t, s, backendPGStoreURL(t, base, schema))
}

// TestMultiProcessRedis checks that two service processes sharing one
// Redis key prefix never over-lease under concurrent load through HTTP.
func TestMultiProcessRedis(t *testing.T) {
	if mpServeIfChild(t) {
		return
	}
	base := backendRedisURL(t)
	admin := backendRedisAdmin(t, base)
	prefix := "{" + backendNamespace("pharox-srvmp-") + "}:"
	s := backendOpenRedis(t, admin, base, prefix)
	mpRun(t, s, backendRedisStoreURL(t, base, prefix))
}

// mpTally is what the clients saw.
type mpTally struct {
	acquired, released, late, abandoned, misses, errors atomic.Int64
	perServer                                           [mpServers]atomic.Int64

	mu          sync.Mutex
	firstErrors []string
	acquiredIDs map[uuid.UUID]bool
	releasedIDs map[uuid.UUID]bool
	// overleases counts the instants at which the clients themselves held
	// more leases on a proxy than it allows; violations describes the first
	// few.
	overleases atomic.Int64
	violations []string
}

func (ty *mpTally) fail(format string, args ...any) {
	ty.errors.Add(1)
	ty.mu.Lock()
	defer ty.mu.Unlock()
	if len(ty.firstErrors) < 5 {
		ty.firstErrors = append(ty.firstErrors, fmt.Sprintf(format, args...))
	}
}

func (ty *mpTally) note(set map[uuid.UUID]bool, id uuid.UUID) {
	ty.mu.Lock()
	defer ty.mu.Unlock()
	set[id] = true
}

// mpRun seeds a pool in s, starts the servers over storeURL (the same
// store), loads them through HTTP, stops them and audits the store.
func mpRun(t *testing.T, s pharox.Storage, storeURL string) {
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "mp-http", Description: "server multi-process audit"})
	if err != nil {
		t.Fatalf("CreatePool: %v", err)
	}
	in := make([]pharox.Proxy, mpProxies)
	limit := mpMaxConcurrency
	for i := range in {
		in[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.77.0.%d", i+1), Port: 3128,
			Protocol: pharox.ProtocolHTTP, MaxConcurrency: &limit}
	}
	proxies, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatalf("AddProxies: %v", err)
	}
	maxc := map[uuid.UUID]int{}
	// holding counts, per proxy, the leases the clients hold from the
	// acquisition's answer to the release request: a sub-interval of the
	// lease's, so it can never exceed the limit if the store does not.
	holding := map[uuid.UUID]*atomic.Int32{}
	for _, p := range proxies {
		maxc[p.ID] = mpMaxConcurrency
		holding[p.ID] = &atomic.Int32{}
	}

	started := time.Now()
	children := make([]*mpChild, mpServers)
	for i := range children {
		children[i] = mpStartChild(t, fmt.Sprintf("server %d", i), storeURL)
	}
	t.Logf("%d servers up in %v: %s, %s", mpServers, time.Since(started).Round(time.Millisecond), children[0].URL, children[1].URL)

	transport := &http.Transport{MaxIdleConnsPerHost: mpClients, IdleConnTimeout: 30 * time.Second}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	ty := &mpTally{acquiredIDs: map[uuid.UUID]bool{}, releasedIDs: map[uuid.UUID]bool{}}
	deadline := time.Now().Add(mpDuration)
	var wg sync.WaitGroup
	for g := range mpClients {
		wg.Go(func() {
			mpClient(ctx, client, children[g%mpServers].URL, g%mpServers, g, pool.ID, deadline, holding, ty)
		})
	}
	wg.Wait()
	transport.CloseIdleConnections()
	for _, c := range children {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	}

	t.Logf("clients: %d acquired (%d via server 0, %d via server 1), %d released, %d released too late, %d abandoned, %d answered 409, %d errors in %v",
		ty.acquired.Load(), ty.perServer[0].Load(), ty.perServer[1].Load(), ty.released.Load(), ty.late.Load(),
		ty.abandoned.Load(), ty.misses.Load(), ty.errors.Load(), mpDuration)
	for _, e := range ty.firstErrors {
		t.Errorf("client: %s", e)
	}
	if n := ty.errors.Load(); n > 0 {
		t.Errorf("clients saw %d errors", n)
	}
	for _, v := range ty.violations {
		t.Errorf("over-lease seen by the clients: %s", v)
	}
	if n := ty.overleases.Load(); n > 0 {
		t.Errorf("the clients held more leases than allowed %d times", n)
	}
	for i := range ty.perServer {
		if ty.perServer[i].Load() == 0 {
			t.Errorf("server %d granted no lease", i)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	mpAudit(t, s, pool.ID, maxc, ty)
	mpAuditConsumers(t, s)
}

// mpAuditConsumers checks that the clients' concurrent first uses of each
// consumer name, through both servers, made one consumer per name.
func mpAuditConsumers(t *testing.T, s pharox.Storage) {
	consumers, err := s.ListConsumers(t.Context())
	if err != nil {
		t.Fatalf("ListConsumers: %v", err)
	}
	count := map[string]int{}
	for _, c := range consumers {
		count[c.Name]++
	}
	for g := range 4 {
		if n := count[mpConsumerName(g)]; n != 1 {
			t.Errorf("%d consumers named %s, want 1", n, mpConsumerName(g))
		}
	}
}

// mpClient acquires and releases leases through one server until deadline.
func mpClient(ctx context.Context, client *http.Client, baseURL string, srv, g int, poolID uuid.UUID,
	deadline time.Time, holding map[uuid.UUID]*atomic.Int32, ty *mpTally) {
	strategy := pharox.AllStrategies[g%len(pharox.AllStrategies)]
	for n := 0; time.Now().Before(deadline); n++ {
		// Every eighth client abandons its first lease, so every run has
		// expired leases to reclaim; later ones are abandoned at random.
		abandon := n == 0 && g%8 == 0 || mrand.IntN(mpAbandonEvery) == 0
		ttl := mpTTL
		if abandon {
			ttl = mpAbandonTTL
		}
		req := api.AcquireRequest{PoolID: poolID.String(), TTLSeconds: &ttl, Strategy: string(strategy)}
		// Four consumers, each named through consumer_id (as the Python SDK
		// does) by some clients and consumer_name by others, first used
		// concurrently through both servers: each must be one consumer.
		if name := mpConsumerName(g); (g/4)%2 == 0 {
			req.ConsumerID = name
		} else {
			req.ConsumerName = name
		}
		status, body, err := mpPost(ctx, client, baseURL+"/v1/leases/", req)
		switch {
		case err != nil:
			ty.fail("acquire via server %d: %v", srv, err)
			time.Sleep(10 * time.Millisecond)
			continue
		case status == http.StatusConflict:
			ty.misses.Add(1)
			time.Sleep(time.Duration(1+mrand.IntN(4)) * time.Millisecond)
			continue
		case status != http.StatusCreated:
			ty.fail("acquire via server %d: %d %s", srv, status, body)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		var l api.Lease
		if err := json.Unmarshal(body, &l); err != nil {
			ty.fail("acquire via server %d: decode %s: %v", srv, body, err)
			continue
		}
		ty.acquired.Add(1)
		ty.perServer[srv].Add(1)
		ty.note(ty.acquiredIDs, l.ID)
		if abandon {
			ty.abandoned.Add(1)
			continue
		}
		h := holding[l.ProxyID]
		if h == nil {
			ty.fail("lease %s is on proxy %s, not one of the pool's", l.ID, l.ProxyID)
			continue
		}
		if held := h.Add(1); held > mpMaxConcurrency {
			ty.overleases.Add(1)
			ty.mu.Lock()
			if len(ty.violations) < 10 {
				ty.violations = append(ty.violations, fmt.Sprintf("proxy %s held %d leases (max %d) when lease %s was granted by server %d",
					l.ProxyID, held, mpMaxConcurrency, l.ID, srv))
			}
			ty.mu.Unlock()
		}
		time.Sleep(time.Duration(mrand.IntN(2000)) * time.Microsecond)
		h.Add(-1)
		// Released through either server: a lease is the store's, not the
		// process's that granted it.
		status, body, err = mpPost(context.WithoutCancel(ctx), client, baseURL+"/v1/leases/"+l.ID.String()+"/release", nil)
		switch {
		case err != nil:
			ty.fail("release %s via server %d: %v", l.ID, srv, err)
		case status == http.StatusOK:
			var ended api.Lease
			if err := json.Unmarshal(body, &ended); err != nil {
				ty.fail("release %s via server %d: decode %s: %v", l.ID, srv, body, err)
				break
			}
			switch ended.Status {
			case "released":
				ty.released.Add(1)
				ty.note(ty.releasedIDs, l.ID)
			case "expired":
				ty.late.Add(1) // stalled past its expiry; the lease expired
			default:
				ty.fail("release %s via server %d answered status %q", l.ID, srv, ended.Status)
			}
		default:
			ty.fail("release %s via server %d: %d %s", l.ID, srv, status, body)
		}
	}
}

// mpConsumerName is the consumer client g acquires as.
func mpConsumerName(g int) string { return fmt.Sprintf("mp-client-%d", g%4) }

// mpPost posts body (JSON, or nothing when nil) with the consumer key.
func mpPost(ctx context.Context, client *http.Client, url string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, rd)
	if err != nil {
		return 0, nil, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set(server.APIKeyHeader, servertest.ConsumerKey)
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

// mpAudit lets the remaining leases expire, reclaims them, and checks the
// store's lease records against what the clients saw.
func mpAudit(t *testing.T, s pharox.Storage, poolID uuid.UUID, maxc map[uuid.UUID]int, ty *mpTally) {
	ctx := t.Context()
	cleaned := storagetest.ReclaimAfterExpiry(t, s, poolID)

	leases, err := s.ListLeases(ctx, pharox.LeaseQuery{PoolID: poolID})
	if err != nil {
		t.Fatalf("ListLeases: %v", err)
	}
	var nReleased, nExpired int64
	stored := map[uuid.UUID]bool{}
	for _, l := range leases {
		if stored[l.ID] {
			t.Errorf("lease %s listed twice", l.ID)
		}
		stored[l.ID] = true
		if !ty.acquiredIDs[l.ID] {
			t.Errorf("the store has lease %s (proxy %s, %s), which no client was granted", l.ID, l.ProxyID, l.Status)
		}
		switch l.Status {
		case pharox.LeaseReleased:
			nReleased++
			if !ty.releasedIDs[l.ID] {
				t.Errorf("lease %s is released, but no client release of it succeeded", l.ID)
			}
		case pharox.LeaseExpired:
			nExpired++
		default:
			t.Errorf("lease %s on proxy %s is %s after every lease expired and cleanup ran (expires %v)",
				l.ID, l.ProxyID, l.Status, l.ExpiresAt)
		}
	}
	for id := range ty.acquiredIDs {
		if !stored[id] {
			t.Errorf("lease %s was granted (201) but the store has no record of it", id)
		}
	}

	// No instant at which a proxy held more leases than it allows.
	storagetest.AuditLeases(t, leases, maxc)

	if got, want := int64(len(leases)), ty.acquired.Load(); got != want {
		t.Errorf("the store has %d lease records, the servers answered 201 %d times", got, want)
	}
	if want := ty.released.Load(); nReleased != want {
		t.Errorf("the store has %d released leases, %d releases answered 200", nReleased, want)
	}
	if want := ty.abandoned.Load() + ty.late.Load(); nExpired != want {
		t.Errorf("the store has %d expired leases, the clients abandoned %d and were too late to release %d",
			nExpired, ty.abandoned.Load(), ty.late.Load())
	}
	ps, err := s.ListProxies(ctx, poolID)
	if err != nil {
		t.Fatalf("ListProxies: %v", err)
	}
	if len(ps) != mpProxies {
		t.Errorf("the pool has %d proxies, want %d", len(ps), mpProxies)
	}
	for _, p := range ps {
		if p.CurrentLeases != 0 {
			t.Errorf("proxy %s CurrentLeases = %d after every lease ended, want 0", p.ID, p.CurrentLeases)
		}
	}
	t.Logf("audit: %d leases (%d released, %d expired; final cleanup ended %d)", len(leases), nReleased, nExpired, cleaned)
}
