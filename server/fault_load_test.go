package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/open"
	"github.com/pharox/pharox/storage/storagetest"
)

// Shape of the load the fault tests run: faultClients HTTP clients acquire
// and release leases on faultProxies exclusive proxies (max_concurrency 1)
// through the servers, while the test breaks the store under them.
const (
	faultClients = 16
	faultProxies = 8
	// faultTTL is the lease length: long enough that a client releases
	// its lease across a short outage, short enough that the audit does
	// not wait long for leases nobody released to expire.
	faultTTL = 5.0
	// faultRecoveryLimit is how soon after the fault ends every answer
	// must be a real one again (201 or 409, never 503). Generous: the
	// machine may be loaded.
	faultRecoveryLimit = 20 * time.Second
	// faultQuiet is how long the load must run without an unavailable
	// answer, after the fault ends, to count as recovered.
	faultQuiet = time.Second
	// faultRetryCap caps the clients' wait before repeating a request the
	// server answered 503, whatever its Retry-After: the load is a probe
	// and must see recovery as soon as it happens.
	faultRetryCap = 200 * time.Millisecond
)

// faultLoad is a running load and what its clients saw. It is an audit
// independent of the store: it knows every lease a client was granted and
// every release a client made.
type faultLoad struct {
	t      *testing.T
	poolID uuid.UUID
	http   *http.Client
	stop   chan struct{}
	wg     sync.WaitGroup
	// holding counts, per proxy, the leases the clients hold from the
	// acquisition's answer to the release request.
	holding map[uuid.UUID]*atomic.Int32

	mu sync.Mutex
	// servers are the service processes; clients spread over them.
	servers      []*mpChild
	statuses     map[string]int // "acquire 201", "release 503", "acquire transport error"
	defects      []string       // the first answers that were neither success nor an expected refusal
	nDefects     int
	granted      map[uuid.UUID]uuid.UUID // lease -> proxy, for every 201
	grantedAt    []time.Time
	releaseTried map[uuid.UUID]bool
	releasedOK   map[uuid.UUID]bool
	overleases   []string
	lastOutage   time.Time // the last 503 or transport error
	nOutage      int
	// lostReleasesAllowed accepts releases that answered 200 and were
	// lost with a database crash (the lease ends expired instead): the
	// PostgreSQL store commits releases without waiting for the WAL flush,
	// by design, since a lost release only keeps its slot taken until the
	// lease expires. The audit still proves no slot was given out twice.
	lostReleasesAllowed bool
}

// startFaultLoad starts the clients over the servers at urls.
func startFaultLoad(t *testing.T, servers []*mpChild, poolID uuid.UUID, proxies []*pharox.Proxy) *faultLoad {
	l := &faultLoad{
		t: t, servers: servers, poolID: poolID,
		http: &http.Client{
			Transport: &http.Transport{MaxIdleConnsPerHost: faultClients, IdleConnTimeout: 30 * time.Second},
			// Longer than any store stall the tests cause (a partition,
			// a held lock): a timeout here would be an outage answer.
			Timeout: 30 * time.Second,
		},
		stop:         make(chan struct{}),
		holding:      map[uuid.UUID]*atomic.Int32{},
		statuses:     map[string]int{},
		granted:      map[uuid.UUID]uuid.UUID{},
		releaseTried: map[uuid.UUID]bool{},
		releasedOK:   map[uuid.UUID]bool{},
	}
	for _, p := range proxies {
		l.holding[p.ID] = &atomic.Int32{}
	}
	for g := range faultClients {
		l.wg.Go(func() { l.client(g) })
	}
	return l
}

// url is the base URL of the server client g talks to.
func (l *faultLoad) url(g int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.servers[g%len(l.servers)].URL
}

// killServer ends server i with SIGKILL, as a crash would, and starts
// another process over the same store in its place; its clients move to
// it.
func (l *faultLoad) killServer(i int, storeURL string) {
	l.mu.Lock()
	old := l.servers[i]
	l.mu.Unlock()
	old.kill()
	next := mpStartChild(l.t, old.name+" (restarted)", storeURL)
	l.mu.Lock()
	l.servers[i] = next
	l.mu.Unlock()
}

// stopped reports whether the load is stopping.
func (l *faultLoad) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// client acquires and releases until the load stops. An acquisition the
// store could not serve is repeated with the same Idempotency-Key.
func (l *faultLoad) client(g int) {
	key := ""
	for !l.stopped() {
		if key == "" {
			key = uuid.NewString()
		}
		ttl := faultTTL
		req := api.AcquireRequest{PoolID: l.poolID.String(), ConsumerName: fmt.Sprintf("fault-client-%d", g), TTLSeconds: &ttl}
		status, hdr, body, err := l.post(l.url(g)+"/v1/leases/", req, key)
		if l.note("acquire", status, hdr, body, err) {
			continue // the same key again
		}
		key = ""
		if status != http.StatusCreated {
			time.Sleep(time.Duration(1+mrand.IntN(3)) * time.Millisecond)
			continue
		}
		var lease api.Lease
		if err := json.Unmarshal(body, &lease); err != nil {
			l.defect("acquire answered 201 with %s: %v", body, err)
			continue
		}
		l.grant(lease)
		time.Sleep(time.Duration(mrand.IntN(3000)) * time.Microsecond)
		l.holding[lease.ProxyID].Add(-1)
		l.release(g, lease.ID)
	}
}

// grant records a lease a client got.
func (l *faultLoad) grant(lease api.Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, dup := l.granted[lease.ID]; dup {
		l.defectLocked("lease %s granted twice", lease.ID)
	}
	l.granted[lease.ID] = lease.ProxyID
	l.grantedAt = append(l.grantedAt, time.Now())
	h := l.holding[lease.ProxyID]
	if h == nil {
		l.defectLocked("lease %s is on proxy %s, not one of the pool's", lease.ID, lease.ProxyID)
		return
	}
	if n := h.Add(1); n > 1 && len(l.overleases) < 10 {
		l.overleases = append(l.overleases, fmt.Sprintf("proxy %s held by %d clients when lease %s was granted", lease.ProxyID, n, lease.ID))
	}
}

// release releases id, repeating while the store is unavailable.
func (l *faultLoad) release(g int, id uuid.UUID) {
	l.mu.Lock()
	l.releaseTried[id] = true
	l.mu.Unlock()
	deadline := time.Now().Add(2 * faultRecoveryLimit)
	for time.Now().Before(deadline) {
		status, hdr, body, err := l.post(l.url(g)+"/v1/leases/"+id.String()+"/release", nil, "")
		if l.note("release", status, hdr, body, err) {
			continue
		}
		if status == http.StatusOK {
			l.mu.Lock()
			l.releasedOK[id] = true
			l.mu.Unlock()
		}
		// 409: it already ended (expired, or an earlier attempt the
		// client never heard back from released it).
		return
	}
	l.defect("release %s: still unavailable after %v", id, 2*faultRecoveryLimit)
}

// note counts an answer and reports whether the request should be
// repeated because the store was unavailable. A 503 must carry
// Retry-After; anything but the expected answers is a defect.
func (l *faultLoad) note(op string, status int, hdr http.Header, body []byte, err error) (again bool) {
	key := op + " " + strconv.Itoa(status)
	if err != nil {
		key = op + " transport error"
	}
	l.mu.Lock()
	l.statuses[key]++
	l.mu.Unlock()
	wait := 10 * time.Millisecond
	switch {
	case err != nil:
		// The service itself went away (it is never killed in these
		// tests unless the test says so): an outage as the client sees it.
	case status == http.StatusServiceUnavailable:
		ra, perr := strconv.Atoi(hdr.Get("Retry-After"))
		if perr != nil || ra < 1 {
			l.defect("%s answered 503 without a valid Retry-After (%q): %s", op, hdr.Get("Retry-After"), body)
		} else {
			wait = time.Duration(ra) * time.Second
		}
	case op == "acquire" && (status == http.StatusCreated || status == http.StatusConflict),
		op == "release" && (status == http.StatusOK || status == http.StatusConflict):
		return false
	default:
		l.defect("%s answered %d: %s", op, status, body)
		return false
	}
	l.mu.Lock()
	l.lastOutage = time.Now()
	l.nOutage++
	l.mu.Unlock()
	time.Sleep(min(wait, faultRetryCap))
	return !l.stopped() || op == "release"
}

func (l *faultLoad) defect(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.defectLocked(format, args...)
}

func (l *faultLoad) defectLocked(format string, args ...any) {
	l.nDefects++
	if len(l.defects) < 10 {
		l.defects = append(l.defects, fmt.Sprintf(format, args...))
	}
}

// post sends body (JSON, or nothing when nil) with the consumer key and,
// when key is not empty, an Idempotency-Key.
func (l *faultLoad) post(url string, body any, key string) (int, http.Header, []byte, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return 0, nil, nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, url, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	req.Header.Set(server.APIKeyHeader, servertest.ConsumerKey)
	resp, err := l.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw, err
}

// grants returns how many leases the clients have been granted since t0.
func (l *faultLoad) grantsSince(t0 time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, at := range l.grantedAt {
		if !at.Before(t0) {
			n++
		}
	}
	return n
}

// waitGrants waits until the clients have been granted n leases since t0,
// failing the test after limit.
func (l *faultLoad) waitGrants(n int, t0 time.Time, limit time.Duration) {
	l.t.Helper()
	deadline := time.Now().Add(limit)
	for l.grantsSince(t0) < n {
		if time.Now().After(deadline) {
			l.t.Fatalf("the clients got %d leases in %v, want %d\n%s", l.grantsSince(t0), limit, n, l.summary())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRecovery waits, after a fault that ended at faultEnd, until the
// load has run faultQuiet without an unavailable answer and been granted
// leases again, and returns how long after faultEnd the last unavailable
// answer came. It fails the test if that takes longer than
// faultRecoveryLimit.
func (l *faultLoad) waitRecovery(faultEnd time.Time) time.Duration {
	l.t.Helper()
	deadline := faultEnd.Add(faultRecoveryLimit + faultQuiet)
	for {
		l.mu.Lock()
		last := l.lastOutage
		l.mu.Unlock()
		if time.Since(last) >= faultQuiet && l.grantsSince(faultEnd) >= faultClients {
			return max(last.Sub(faultEnd), 0)
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("not recovered %v after the fault ended: last unavailable answer %v after it, %d leases granted since\n%s",
				faultRecoveryLimit, last.Sub(faultEnd).Round(time.Millisecond), l.grantsSince(faultEnd), l.summary())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the clients and waits for them (each finishes its release),
// then checks what they saw: no answer but the expected ones (so no 500),
// no proxy held by two clients at once.
func (l *faultLoad) Stop() {
	l.t.Helper()
	close(l.stop)
	l.wg.Wait()
	l.http.CloseIdleConnections()
	l.t.Logf("load: %s", l.summary())
	l.mu.Lock()
	servers := l.servers
	l.mu.Unlock()
	for _, c := range servers {
		if err := c.Stop(); err != nil {
			l.t.Error(err)
		}
	}
	for _, d := range l.defects {
		l.t.Errorf("client: %s", d)
	}
	if l.nDefects > len(l.defects) {
		l.t.Errorf("... %d defects in all", l.nDefects)
	}
	for _, o := range l.overleases {
		l.t.Errorf("over-lease seen by the clients: %s", o)
	}
}

// summary is the answers counted so far, by operation and status.
func (l *faultLoad) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := make([]string, 0, len(l.statuses))
	for k := range l.statuses {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, l.statuses[k])
	}
	return fmt.Sprintf("%d leases granted, %d released; %s", len(l.granted), len(l.releasedOK), strings.Join(parts, ", "))
}

// Audit opens the store at storeURL, lets every lease expire and be
// reclaimed, and checks the store's records against what the clients saw:
// every granted lease is there, released if a release of it succeeded and
// only if a client asked, and no proxy ever held more leases than it
// allows. A lease no client was granted (the store acted but its answer
// was lost with the connection) must not have been released by anyone; it
// is reported, and with Idempotency-Key honoured there are none.
func (l *faultLoad) Audit(storeURL string) {
	t := l.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := open.Open(ctx, storeURL)
	if err != nil {
		t.Fatalf("audit: open %s: %v", open.Redact(storeURL), err)
	}
	defer s.Close()
	storagetest.ReclaimAfterExpiry(t, s, l.poolID)
	leases, err := s.ListLeases(ctx, pharox.LeaseQuery{PoolID: l.poolID})
	if err != nil {
		t.Fatalf("audit: ListLeases: %v", err)
	}
	stored := map[uuid.UUID]*pharox.Lease{}
	orphans, lostReleases := 0, 0
	for _, le := range leases {
		if stored[le.ID] != nil {
			t.Errorf("audit: lease %s listed twice", le.ID)
		}
		stored[le.ID] = le
		proxy, granted := l.granted[le.ID]
		switch {
		case !granted:
			orphans++
			if le.Status == pharox.LeaseReleased {
				t.Errorf("audit: lease %s, which no client was granted, is released", le.ID)
			}
		case proxy != le.ProxyID:
			t.Errorf("audit: lease %s was granted on proxy %s, the store has it on %s", le.ID, proxy, le.ProxyID)
		case le.Status == pharox.LeaseReleased && !l.releaseTried[le.ID]:
			t.Errorf("audit: lease %s is released, but no client asked", le.ID)
		case le.Status == pharox.LeaseExpired && l.releasedOK[le.ID] && l.lostReleasesAllowed:
			lostReleases++
		case le.Status != pharox.LeaseReleased && l.releasedOK[le.ID]:
			t.Errorf("audit: lease %s is %s, but its release answered 200", le.ID, le.Status)
		case le.Status == pharox.LeaseActive:
			t.Errorf("audit: lease %s is still active after every lease expired and cleanup ran", le.ID)
		}
	}
	for id := range l.granted {
		if stored[id] == nil {
			t.Errorf("audit: lease %s was granted (201) but the store has no record of it", id)
		}
	}
	maxc := map[uuid.UUID]int{}
	for id := range l.holding {
		maxc[id] = 1
	}
	storagetest.AuditLeases(t, leases, maxc)
	ps, err := s.ListProxies(ctx, l.poolID)
	if err != nil {
		t.Fatalf("audit: ListProxies: %v", err)
	}
	for _, p := range ps {
		if p.CurrentLeases != 0 {
			t.Errorf("audit: proxy %s CurrentLeases = %d after every lease ended", p.ID, p.CurrentLeases)
		}
	}
	t.Logf("audit: %d lease records, %d granted to clients, %d orphaned by lost answers, %d releases lost with the crash (slot held until expiry)",
		len(leases), len(l.granted), orphans, lostReleases)
}

// faultSeed creates the load's pool of exclusive proxies in the store at
// storeURL (migrating it) and returns it.
func faultSeed(t testing.TB, storeURL string) (uuid.UUID, []*pharox.Proxy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := open.Open(ctx, storeURL)
	if err != nil {
		t.Fatalf("open %s: %v", open.Redact(storeURL), err)
	}
	defer s.Close()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "faults", Description: "fault test load"})
	if err != nil {
		t.Fatalf("CreatePool: %v", err)
	}
	in := make([]pharox.Proxy, faultProxies)
	one := 1
	for i := range in {
		in[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.78.0.%d", i+1), Port: 3128,
			Protocol: pharox.ProtocolHTTP, MaxConcurrency: &one}
	}
	proxies, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatalf("AddProxies: %v", err)
	}
	return pool.ID, proxies
}

// faultRun is the shape of every fault test: seed the store, start
// servers over it, run the load, break the store with fault (which
// returns when the fault has ended), wait for recovery, stop, audit.
func faultRun(t *testing.T, storeURL string, servers int, fault func(l *faultLoad)) {
	poolID, proxies := faultSeed(t, storeURL)
	children := make([]*mpChild, servers)
	for i := range children {
		children[i] = mpStartChild(t, fmt.Sprintf("server %d", i), storeURL)
	}
	l := startFaultLoad(t, children, poolID, proxies)
	stopped := false
	defer func() {
		if !stopped {
			close(l.stop)
			l.wg.Wait()
		}
	}()
	l.waitGrants(4*faultClients, time.Time{}, time.Minute)
	before := l.nOutageNow()
	faultStart := time.Now()
	fault(l)
	faultEnd := time.Now()
	recovery := l.waitRecovery(faultEnd)
	stopped = true
	l.Stop()
	t.Logf("fault lasted %v; %d unavailable answers; last one %v after the fault ended (limit %v)",
		faultEnd.Sub(faultStart).Round(time.Millisecond), l.nOutageNow()-before, recovery.Round(time.Millisecond), faultRecoveryLimit)
	if t.Failed() {
		t.FailNow()
	}
	l.Audit(storeURL)
}

func (l *faultLoad) nOutageNow() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nOutage
}

// faultWaitReady polls the server's /readyz until it answers want, failing
// the test after faultRecoveryLimit.
func faultWaitReady(t testing.TB, baseURL string, want int) {
	t.Helper()
	deadline := time.Now().Add(faultRecoveryLimit)
	got := 0
	for time.Now().Before(deadline) {
		resp, err := http.Get(baseURL + "/readyz")
		if err == nil {
			got = resp.StatusCode
			if got == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
				t.Errorf("/readyz answered 503 without Retry-After")
			}
			resp.Body.Close()
			if got == want {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("/readyz still answers %d after %v, want %d", got, faultRecoveryLimit, want)
}
