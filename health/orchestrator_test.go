package health

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/internal/testpeers"
)

// seedPool creates pool name in store with copies of proxies and returns
// the stored proxies in input order.
func seedPool(t *testing.T, store pharox.Storage, name string, proxies ...*pharox.Proxy) []*pharox.Proxy {
	t.Helper()
	ctx := context.Background()
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	in := make([]pharox.Proxy, len(proxies))
	for i, p := range proxies {
		in[i] = *p.Clone()
		in[i].ID = uuid.Nil
		in[i].PoolID = pool.ID
	}
	out, err := store.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func getProxy(t *testing.T, store pharox.Storage, id uuid.UUID) *pharox.Proxy {
	t.Helper()
	p, err := store.GetProxy(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSweepPool(t *testing.T) {
	tg := newTarget(t)
	store := testfactory.Memory(t)
	proxies := seedPool(t, store, "main",
		proxyAt(t, startHTTPProxy(t, openProxy), pharox.ProtocolHTTP, nil),
		proxyAt(t, startHTTPProxy(t, testpeers.HTTPOptions{NoAuth: true, TLS: true}), pharox.ProtocolHTTPS, nil),
		proxyAt(t, startSOCKS5(t, true), pharox.ProtocolSOCKS5, testpeers.Alice()),
		proxyAt(t, startSOCKS4(t, ""), pharox.ProtocolSOCKS4, nil),
		proxyAt(t, startHTTPProxy(t, slowProxy(time.Second)), pharox.ProtocolHTTP, nil),
		proxyAt(t, startHTTPProxy(t, testpeers.HTTPOptions{Accept: rejectAll}), pharox.ProtocolHTTP, testpeers.Alice()),
		proxyAt(t, startResetPeer(t), pharox.ProtocolHTTP, nil),
		proxyAt(t, closedPort(t), pharox.ProtocolSOCKS5, nil),
	)
	// The slow peer is 1 s slow, the others answer in milliseconds: the
	// threshold sits far from both.
	checker := newTestChecker(t, CheckerOptions{TargetURL: tg.TLS.URL, TLSConfig: tlsTrusting(tg), SlowThreshold: 400 * time.Millisecond})
	var progress []Progress
	o := NewOrchestrator(store, checker, OrchestratorOptions{
		Concurrency:      4,
		FailureThreshold: 1,
		Progress:         func(p Progress) { progress = append(progress, p) },
	})
	s, err := o.SweepPool(context.Background(), "main")
	if err != nil {
		t.Fatalf("SweepPool: %v", err)
	}
	if s.Pool != "main" || s.Total != 8 || s.Checked != 8 || s.Skipped != 0 || s.Deleted != 0 || s.Unfinished != 0 {
		t.Fatalf("summary counts: %+v", s)
	}
	wantStatus := map[pharox.ProxyStatus]int{pharox.StatusActive: 4, pharox.StatusSlow: 1, pharox.StatusInactive: 3}
	for _, st := range pharox.AllProxyStatuses {
		if s.ByStatus[st] != wantStatus[st] || s.Observed[st] != wantStatus[st] {
			t.Errorf("%s: stored %d observed %d, want %d", st, s.ByStatus[st], s.Observed[st], wantStatus[st])
		}
	}
	wantKinds := map[ErrorKind]int{KindProxyAuth: 1, KindReset: 1, KindRefused: 1}
	if len(s.ByErrorKind) != len(wantKinds) {
		t.Errorf("ByErrorKind = %v, want %v", s.ByErrorKind, wantKinds)
	}
	for k, n := range wantKinds {
		if s.ByErrorKind[k] != n {
			t.Errorf("ByErrorKind[%s] = %d, want %d", k, s.ByErrorKind[k], n)
		}
	}
	if s.Changed != 4 { // slow and three inactive; the others were already active
		t.Errorf("Changed = %d, want 4", s.Changed)
	}
	if s.Latency.Count != 5 || s.Latency.Min <= 0 || s.Latency.P50 < s.Latency.Min || s.Latency.Max < s.Latency.P99 {
		t.Errorf("latency stats %+v", s.Latency)
	}
	if len(s.Slowest) != 5 || s.Slowest[0].ProxyID != proxies[4].ID || s.Slowest[0].Status != pharox.StatusSlow {
		t.Errorf("slowest first = %+v, want the slow proxy", s.Slowest[0])
	}
	if len(s.Failing) != 3 || s.FailingTotal != 3 {
		t.Fatalf("failing = %+v", s.Failing)
	}
	for _, f := range s.Failing {
		if strings.Contains(f.Proxy, testpeers.Password) || strings.Contains(f.Error, testpeers.Password) {
			t.Errorf("report leaks the password: %+v", f)
		}
	}

	// The reason of every status change is visible on the stored proxy.
	auth := getProxy(t, store, proxies[5].ID)
	if auth.Status != pharox.StatusInactive || auth.LastStatusCode != 407 || auth.LastError == "" ||
		auth.CheckedAt == nil || auth.StatusChangedAt == nil || auth.FailureStreak != 1 {
		t.Errorf("407 proxy stored as %+v", auth)
	}
	refused := getProxy(t, store, proxies[7].ID)
	if refused.Status != pharox.StatusInactive || !strings.Contains(refused.LastError, "refused") {
		t.Errorf("closed-port proxy stored as status %s error %q", refused.Status, refused.LastError)
	}
	ok := getProxy(t, store, proxies[0].ID)
	if ok.Status != pharox.StatusActive || ok.LastError != "" || ok.LastStatusCode != 200 || ok.LatencyMS < 0 || ok.CheckedAt == nil {
		t.Errorf("healthy proxy stored as %+v", ok)
	}

	if len(progress) != 8 {
		t.Fatalf("progress called %d times, want 8", len(progress))
	}
	for i, p := range progress {
		if p.Done != i+1 || p.Total != 8 || p.Pool != "main" {
			t.Fatalf("progress[%d] = %+v", i, p)
		}
	}
	if last := progress[7]; last.Checked != 8 || last.Failed != 3 {
		t.Errorf("last progress = %+v", last)
	}
}

// TestSweepStreakAndRecovery: a failing proxy turns inactive only after the
// failure streak, and one healthy probe brings it back.
func TestSweepStreakAndRecovery(t *testing.T) {
	tg := newTarget(t)
	var answer atomic.Int64
	store := testfactory.Memory(t)
	proxies := seedPool(t, store, "p",
		proxyAt(t, startHTTPProxy(t, switchProxy(&answer)), pharox.ProtocolHTTP, nil),
		proxyAt(t, startHTTPProxy(t, openProxy), pharox.ProtocolHTTP, nil))
	o := NewOrchestrator(store, newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL}), OrchestratorOptions{FailureThreshold: 3})
	sweep := func() {
		t.Helper()
		if _, err := o.SweepPool(context.Background(), "p"); err != nil {
			t.Fatal(err)
		}
	}
	answer.Store(http.StatusBadGateway)
	for i := 1; i <= 3; i++ {
		sweep()
		p := getProxy(t, store, proxies[0].ID)
		want := pharox.StatusActive
		if i == 3 {
			want = pharox.StatusInactive
		}
		if p.Status != want || p.FailureStreak != i || p.LastStatusCode != http.StatusBadGateway {
			t.Fatalf("after %d failed sweeps: status %s streak %d code %d", i, p.Status, p.FailureStreak, p.LastStatusCode)
		}
	}
	// Leasing skips it now.
	for range 3 {
		got, err := store.FindAvailableProxy(context.Background(), "p", nil, pharox.Random)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID == proxies[0].ID {
			t.Fatal("inactive proxy offered for leasing")
		}
	}
	answer.Store(0)
	sweep()
	p := getProxy(t, store, proxies[0].ID)
	if p.Status != pharox.StatusActive || p.FailureStreak != 0 || p.LastError != "" {
		t.Fatalf("after recovery: status %s streak %d error %q", p.Status, p.FailureStreak, p.LastError)
	}
}

// TestSweepBanCooldown runs sweeps under a fake clock: banned proxies rest
// with doubling cool-downs, are not probed while resting, and come back
// once the target lets them through again.
func TestSweepBanCooldown(t *testing.T) {
	tg := newTarget(t)
	var answer atomic.Int64
	store := testfactory.Memory(t)
	proxies := seedPool(t, store, "p",
		proxyAt(t, startHTTPProxy(t, switchProxy(&answer)), pharox.ProtocolHTTP, nil),
		proxyAt(t, startHTTPProxy(t, openProxy), pharox.ProtocolHTTP, nil))
	var mu sync.Mutex
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	o := NewOrchestrator(store, newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL}), OrchestratorOptions{
		FailureThreshold: 2, BanCooldown: time.Minute, MaxBanCooldown: 3 * time.Minute, Clock: clock,
	})
	sweep := func() *SweepSummary {
		t.Helper()
		s, err := o.SweepPool(context.Background(), "p")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	banned := func() *pharox.Proxy { return getProxy(t, store, proxies[0].ID) }

	answer.Store(http.StatusTooManyRequests)
	sweep()
	advance(time.Second)
	sweep()
	if p := banned(); p.Status != pharox.StatusBanned || p.LastStatusCode != 429 || !p.StatusChangedAt.Equal(clock()) {
		t.Fatalf("after two 429s: %+v", p)
	}
	for _, rest := range []time.Duration{time.Minute, 2 * time.Minute, 3 * time.Minute, 3 * time.Minute} {
		advance(rest - time.Second)
		if s := sweep(); s.Skipped != 1 || s.Checked != 1 || s.ByStatus[pharox.StatusBanned] != 1 {
			t.Fatalf("%v into a %v rest: %+v", rest-time.Second, rest, s)
		}
		advance(time.Second)
		if s := sweep(); s.Skipped != 0 || s.Checked != 2 {
			t.Fatalf("after a %v rest: %+v", rest, s)
		}
	}
	if p := banned(); p.Status != pharox.StatusBanned || p.FailureStreak != 6 {
		t.Fatalf("still banned: %s streak %d", p.Status, p.FailureStreak)
	}

	// IgnoreCooldown probes it anyway; the target lets it through now.
	answer.Store(0)
	force := NewOrchestrator(store, newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL}), OrchestratorOptions{IgnoreCooldown: true, Clock: clock})
	if s, err := force.SweepPool(context.Background(), "p"); err != nil || s.Checked != 2 {
		t.Fatalf("forced sweep: %+v %v", s, err)
	}
	if p := banned(); p.Status != pharox.StatusActive || p.FailureStreak != 0 {
		t.Fatalf("after recovery: %s streak %d", p.Status, p.FailureStreak)
	}
}

func TestSweepSurvivesDeletedProxies(t *testing.T) {
	tg := newTarget(t)
	addr := startHTTPProxy(t, openProxy)
	store := testfactory.Memory(t)
	var in []*pharox.Proxy
	for range 5 {
		p := proxyAt(t, addr, pharox.ProtocolHTTP, &pharox.Credentials{User: uuid.NewString()})
		in = append(in, p)
	}
	proxies := seedPool(t, store, "p", in...)
	var once sync.Once
	o := NewOrchestrator(store, newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL}), OrchestratorOptions{
		Concurrency: 1,
		Progress: func(Progress) {
			// With one worker, the proxies not checked yet are listed but
			// not probed: delete them under the sweep's feet.
			once.Do(func() {
				for _, p := range proxies {
					if getProxy(t, store, p.ID).CheckedAt != nil {
						continue
					}
					if err := store.DeleteProxy(context.Background(), p.ID); err != nil {
						t.Error(err)
					}
				}
			})
		},
	})
	s, err := o.SweepPool(context.Background(), "p")
	if err != nil {
		t.Fatalf("SweepPool: %v", err)
	}
	if s.Total != 5 || s.Checked != 1 || s.Deleted != 4 || s.StoreErrors != 0 {
		t.Fatalf("summary %+v", s)
	}
}

func TestSweepTargetDown(t *testing.T) {
	store := testfactory.Memory(t)
	proxies := seedPool(t, store, "p", proxyAt(t, startHTTPProxy(t, openProxy), pharox.ProtocolHTTP, nil))
	checker := newTestChecker(t, CheckerOptions{TargetURL: "http://" + closedPort(t) + "/"})
	o := NewOrchestrator(store, checker, OrchestratorOptions{FailureThreshold: 1})
	s, err := o.SweepPool(context.Background(), "p")
	if !errors.Is(err, ErrTargetUnreachable) || s == nil || s.Checked != 0 {
		t.Fatalf("SweepPool = %+v, %v; want ErrTargetUnreachable", s, err)
	}
	if p := getProxy(t, store, proxies[0].ID); p.Status != pharox.StatusActive || p.CheckedAt != nil {
		t.Fatalf("proxy touched by an aborted sweep: %+v", p)
	}
	o = NewOrchestrator(store, checker, OrchestratorOptions{FailureThreshold: 1, SkipTargetCheck: true})
	if s, err := o.SweepPool(context.Background(), "p"); err != nil || s.ByStatus[pharox.StatusInactive] != 1 {
		t.Fatalf("sweep without target check = %+v, %v", s, err)
	}
}

func TestSweepAllAndMissingPool(t *testing.T) {
	tg := newTarget(t)
	store := testfactory.Memory(t)
	addr := startSOCKS5(t, false)
	seedPool(t, store, "a", proxyAt(t, addr, pharox.ProtocolSOCKS5, nil))
	seedPool(t, store, "b", proxyAt(t, addr, pharox.ProtocolSOCKS5, testpeers.Alice()), proxyAt(t, closedPort(t), pharox.ProtocolHTTP, nil))
	seedPool(t, store, "empty")
	o := NewOrchestrator(store, newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL}), OrchestratorOptions{FailureThreshold: 1, RateLimit: 1000})
	s, err := o.SweepAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Pool != "" || strings.Join(s.Pools, ",") != "a,b,empty" || s.Checked != 3 || s.ByStatus[pharox.StatusActive] != 2 || s.ByStatus[pharox.StatusInactive] != 1 {
		t.Fatalf("SweepAll = %+v", s)
	}
	if _, err := o.SweepPool(context.Background(), "nope"); !errors.Is(err, pharox.ErrPoolNotFound) {
		t.Fatalf("SweepPool(nope) = %v, want ErrPoolNotFound", err)
	}
	if s, err := o.SweepPool(context.Background(), "empty"); err != nil || s.Total != 0 {
		t.Fatalf("empty pool: %+v %v", s, err)
	}
}

func TestSweepCanceled(t *testing.T) {
	tg := newTarget(t)
	store := testfactory.Memory(t)
	addr := startHTTPProxy(t, slowProxy(300*time.Millisecond))
	var in []*pharox.Proxy
	for range 6 {
		in = append(in, proxyAt(t, addr, pharox.ProtocolHTTP, &pharox.Credentials{User: uuid.NewString()}))
	}
	seedPool(t, store, "p", in...)
	ctx, cancel := context.WithCancel(context.Background())
	o := NewOrchestrator(store, newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL}), OrchestratorOptions{
		Concurrency: 2,
		Progress:    func(Progress) { cancel() },
	})
	s, err := o.SweepPool(ctx, "p")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if s.Checked < 1 || s.Unfinished < 1 || s.Checked+s.Unfinished != 6 {
		t.Fatalf("summary %+v", s)
	}
	// Unfinished proxies were not marked.
	ps, _ := store.ListProxies(context.Background(), mustPool(t, store, "p").ID)
	checked := 0
	for _, p := range ps {
		if p.CheckedAt != nil {
			checked++
		}
		if p.Status != pharox.StatusActive {
			t.Errorf("proxy %s marked %s by a canceled sweep", p.ID, p.Status)
		}
	}
	if checked != s.Checked {
		t.Fatalf("%d proxies carry a check, summary says %d", checked, s.Checked)
	}
}

func mustPool(t *testing.T, store pharox.Storage, name string) *pharox.Pool {
	t.Helper()
	p, err := store.GetPoolByName(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRun(t *testing.T) {
	tg := newTarget(t)
	store := testfactory.Memory(t)
	seedPool(t, store, "a", proxyAt(t, startHTTPProxy(t, openProxy), pharox.ProtocolHTTP, nil))
	seedPool(t, store, "b", proxyAt(t, closedPort(t), pharox.ProtocolHTTP, nil))
	ctx, cancel := context.WithCancel(context.Background())
	var sweeps []*SweepSummary
	o := NewOrchestrator(store, newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL}), OrchestratorOptions{
		Pools: []string{"a"},
		OnSweep: func(s *SweepSummary, err error) {
			if err != nil {
				t.Error(err)
			}
			sweeps = append(sweeps, s)
			if len(sweeps) == 3 {
				cancel()
			}
		},
	})
	if err := o.Run(ctx, 10*time.Millisecond); err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}
	if len(sweeps) != 3 {
		t.Fatalf("%d sweeps, want 3", len(sweeps))
	}
	for _, s := range sweeps {
		if s.Pool != "a" || s.Checked != 1 {
			t.Fatalf("sweep %+v, want pool a only", s)
		}
	}
	if err := o.Run(context.Background(), 0); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("Run(0) = %v", err)
	}
}

// brokenStore fails every health write, as a store whose disk is full.
type brokenStore struct{ pharox.Storage }

var errDiskFull = errors.New("disk full")

func (brokenStore) ApplyHealthCheckResult(context.Context, pharox.HealthCheckResult) (*pharox.Proxy, error) {
	return nil, errDiskFull
}

func TestSweepStoreErrors(t *testing.T) {
	tg := newTarget(t)
	store := testfactory.Memory(t)
	seedWorkingPool(t, store, "p", 3)
	checker := newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL})
	var last Progress
	o := NewOrchestrator(brokenStore{store}, checker, OrchestratorOptions{Progress: func(p Progress) { last = p }})
	s, err := o.SweepPool(context.Background(), "p")
	if !errors.Is(err, errDiskFull) || s.StoreErrors != 3 || s.Checked != 0 || s.Unfinished != 0 {
		t.Fatalf("SweepPool = %+v, %v; want 3 store errors", s, err)
	}
	if last.Done != 3 || last.StoreErrors != 3 {
		t.Fatalf("last progress %+v", last)
	}
	if _, err := NewOrchestrator(nil, checker, OrchestratorOptions{}).SweepAll(context.Background()); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("nil store: %v", err)
	}
	if _, err := NewOrchestrator(store, nil, OrchestratorOptions{}).SweepPool(context.Background(), "p"); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Fatalf("nil checker: %v", err)
	}
}

// TestSweepBanGuard: a target that answers 429 through every proxy (a bad
// ban rule, or a target blocking everyone) does not ban the whole pool.
func TestSweepBanGuard(t *testing.T) {
	tg := newTarget(t)
	var blocked, open atomic.Int64
	blocked.Store(http.StatusTooManyRequests)
	blockedAddr := startHTTPProxy(t, switchProxy(&blocked))
	openAddr := startHTTPProxy(t, switchProxy(&open))
	user := func() *pharox.Credentials { return &pharox.Credentials{User: uuid.NewString()} }
	ctx := context.Background()
	checker := newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL})

	store := testfactory.Memory(t)
	all := seedPool(t, store, "all-blocked",
		proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()), proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()),
		proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()), proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()))
	seedPool(t, store, "one-blocked",
		proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()), proxyAt(t, openAddr, pharox.ProtocolHTTP, user()),
		proxyAt(t, openAddr, pharox.ProtocolHTTP, user()), proxyAt(t, openAddr, pharox.ProtocolHTTP, user()))

	o := NewOrchestrator(store, checker, OrchestratorOptions{FailureThreshold: 1})
	s, err := o.SweepAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Observed[pharox.StatusBanned] != 5 || s.BansWithheld != 4 || s.ByStatus[pharox.StatusBanned] != 1 || s.ByStatus[pharox.StatusActive] != 7 {
		t.Fatalf("summary: observed %v stored %v withheld %d", s.Observed, s.ByStatus, s.BansWithheld)
	}
	p := getProxy(t, store, all[0].ID)
	if p.Status != pharox.StatusActive || p.FailureStreak != 1 || p.LastStatusCode != 429 || !strings.Contains(p.LastError, "ban not applied") {
		t.Fatalf("guarded proxy stored as %+v", p)
	}

	// With the guard off the same sweep bans the whole pool.
	store = testfactory.Memory(t)
	seedPool(t, store, "all-blocked", proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()), proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()))
	o = NewOrchestrator(store, checker, OrchestratorOptions{FailureThreshold: 1, MaxBannedShare: 1})
	if s, err = o.SweepAll(ctx); err != nil || s.ByStatus[pharox.StatusBanned] != 2 || s.BansWithheld != 0 {
		t.Fatalf("guard off: %+v %v", s, err)
	}
}

// TestNewOrchestratorNaNOptions: NaN float options count as unset, never as
// a guard or limit that compares false with everything.
func TestNewOrchestratorNaNOptions(t *testing.T) {
	o := NewOrchestrator(testfactory.Memory(t), nil, OrchestratorOptions{RateLimit: math.NaN(), MaxBannedShare: math.NaN()})
	if o.opts.MaxBannedShare != DefaultMaxBannedShare {
		t.Errorf("MaxBannedShare NaN became %v, want the default %v", o.opts.MaxBannedShare, DefaultMaxBannedShare)
	}
	if o.opts.RateLimit != 0 || o.limiter != nil {
		t.Errorf("RateLimit NaN became %v (limiter %v), want no limit", o.opts.RateLimit, o.limiter)
	}
}

// TestSweepRecordsSiteBans: a probe's ban is also recorded for the probe
// target's site, so acquisitions for that site pass the proxy over; a ban
// the guard withholds is not, and DisableTargetHealth turns it off.
func TestSweepRecordsSiteBans(t *testing.T) {
	tg := newTarget(t)
	var blocked, open atomic.Int64
	blocked.Store(http.StatusTooManyRequests)
	blockedAddr := startHTTPProxy(t, switchProxy(&blocked))
	openAddr := startHTTPProxy(t, switchProxy(&open))
	user := func() *pharox.Credentials { return &pharox.Credentials{User: uuid.NewString()} }
	ctx := context.Background()
	checker := newTestChecker(t, CheckerOptions{TargetURL: tg.Plain.URL})
	site, err := pharox.NormalizeTarget(tg.Plain.URL)
	if err != nil {
		t.Fatal(err)
	}
	entries := func(store pharox.Storage, id uuid.UUID) []*pharox.TargetState {
		t.Helper()
		ts, err := store.ListTargetStates(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}

	store := testfactory.Memory(t)
	all := seedPool(t, store, "all-blocked",
		proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()), proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()),
		proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()), proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()))
	one := seedPool(t, store, "one-blocked",
		proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()), proxyAt(t, openAddr, pharox.ProtocolHTTP, user()),
		proxyAt(t, openAddr, pharox.ProtocolHTTP, user()), proxyAt(t, openAddr, pharox.ProtocolHTTP, user()))
	if _, err := NewOrchestrator(store, checker, OrchestratorOptions{FailureThreshold: 1}).SweepAll(ctx); err != nil {
		t.Fatal(err)
	}
	got := entries(store, one[0].ID)
	if len(got) != 1 || got[0].Target != site || got[0].CoolingUntil == nil || got[0].LastStatusCode != 429 {
		t.Fatalf("banned proxy's site entries: %+v, want one cooling for %q", got, site)
	}
	if got := entries(store, one[1].ID); len(got) != 0 {
		t.Fatalf("healthy proxy has site entries %+v", got)
	}
	if got := entries(store, all[0].ID); len(got) != 0 {
		t.Fatalf("a ban the guard withheld was recorded for the site: %+v", got)
	}
	c, err := store.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	// The site's acquisitions never get the proxy banned for it, even
	// once an operator set it active again.
	if _, err := store.SetProxyStatus(ctx, one[0].ID, pharox.StatusActive); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		l, err := store.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "one-blocked", ConsumerID: c.ID, ConsumerName: c.Name,
			Duration: time.Minute, Strategy: pharox.FirstAvailable, Target: site})
		if err != nil {
			t.Fatal(err)
		}
		if l.ProxyID == one[0].ID {
			t.Fatalf("acquired the proxy cooling down for %q", site)
		}
	}

	store = testfactory.Memory(t)
	off := seedPool(t, store, "p", proxyAt(t, blockedAddr, pharox.ProtocolHTTP, user()), proxyAt(t, openAddr, pharox.ProtocolHTTP, user()),
		proxyAt(t, openAddr, pharox.ProtocolHTTP, user()), proxyAt(t, openAddr, pharox.ProtocolHTTP, user()))
	if _, err := NewOrchestrator(store, checker, OrchestratorOptions{FailureThreshold: 1, DisableTargetHealth: true}).SweepAll(ctx); err != nil {
		t.Fatal(err)
	}
	if p := getProxy(t, store, off[0].ID); p.Status != pharox.StatusBanned {
		t.Fatalf("with DisableTargetHealth the proxy is %s, want banned", p.Status)
	}
	if got := entries(store, off[0].ID); len(got) != 0 {
		t.Fatalf("DisableTargetHealth: site entries %+v", got)
	}
}
