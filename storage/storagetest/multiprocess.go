package storagetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

// MultiProcessConfig configures [RunMultiProcess]. Zero counts and
// durations take the defaults noted on each field.
type MultiProcessConfig struct {
	// Open opens the shared store for namespace (a schema name, key prefix
	// or file name derived from it). It runs in the parent and in every
	// worker process, which must all see the same data. Destructive
	// cleanup (DROP SCHEMA, deleting keys, removing files) belongs in the
	// parent only: register it when ![IsWorkerProcess].
	Open func(t testing.TB, namespace string) pharox.Storage
	// Processes is how many worker processes run at once (default 4).
	Processes int
	// Goroutines is how many goroutines acquire in each worker (default 16).
	Goroutines int
	// Proxies is how many proxies the pool has (default 10).
	Proxies int
	// MaxConcurrency is every proxy's limit (default 2).
	MaxConcurrency int
	// Duration is how long workers keep acquiring (default 3s).
	Duration time.Duration
	// ConsumerCap, when positive, has a quarter of the goroutines acquire
	// as mpCappedConsumers consumers shared by every worker, each with a
	// quota of MaxConcurrentLeases = ConsumerCap; the parent then checks,
	// from the intervals the workers held those leases, that no consumer
	// held more than ConsumerCap at once across the processes, and that
	// one reached it. Zero leaves the quota part out.
	ConsumerCap int
}

func (c *MultiProcessConfig) defaults() {
	if c.Processes <= 0 {
		c.Processes = 4
	}
	if c.Goroutines <= 0 {
		c.Goroutines = 16
	}
	if c.Proxies <= 0 {
		c.Proxies = 10
	}
	if c.MaxConcurrency <= 0 {
		c.MaxConcurrency = 2
	}
	if c.Duration <= 0 {
		c.Duration = 3 * time.Second
	}
}

// Environment of a worker process.
const (
	envWorker    = "PHAROX_STORAGETEST_WORKER" // worker index; its presence marks a worker
	envTest      = "PHAROX_STORAGETEST_TEST"   // the test the worker serves
	envNamespace = "PHAROX_STORAGETEST_NAMESPACE"
	envPool      = "PHAROX_STORAGETEST_POOL"
	envDuration  = "PHAROX_STORAGETEST_DURATION"
	// envVerdict names a lease whose verdict every worker claims (stores
	// implementing pharox.LeaseVerdictStore).
	envVerdict = "PHAROX_STORAGETEST_VERDICT_LEASE"
)

// tallyPrefix starts the line on which a worker reports its tally.
const tallyPrefix = "PHAROX-STORAGETEST-TALLY "

// Lease durations in workers: leases meant to be released are long enough
// that a stalled worker still releases them in time; abandoned ones are
// short so the run ends soon after the workers.
const (
	mpLease          = 2 * time.Second
	mpAbandonedLease = 300 * time.Millisecond
	mpAbandonEvery   = 40 // about one acquisition in this many is abandoned
)

// workerTally is what one worker process reports.
type workerTally struct {
	Worker int `json:"worker"`
	// Acquired counts successful AcquireLease calls.
	Acquired int64 `json:"acquired"`
	// Released counts successful ReleaseLease calls.
	Released int64 `json:"released"`
	// Late counts ReleaseLease calls that found the lease already expired.
	Late int64 `json:"late"`
	// Abandoned counts leases deliberately left to expire.
	Abandoned int64 `json:"abandoned"`
	// Misses counts ErrNoProxyAvailable.
	Misses int64 `json:"misses"`
	// Cleaned sums what the worker's CleanupExpiredLeases calls returned.
	Cleaned int64 `json:"cleaned"`
	// Errors counts any other error; FirstErrors holds a few of them.
	Errors      int64    `json:"errors"`
	FirstErrors []string `json:"first_errors,omitempty"`
	// SharedConsumer is the id EnsureConsumer gave for the name every
	// worker asks for.
	SharedConsumer uuid.UUID `json:"shared_consumer"`
	// VerdictsWon counts ClaimLeaseVerdict calls on the shared verdict
	// lease that reported being first.
	VerdictsWon int64 `json:"verdicts_won"`
	// TargetLeases are leases taken for mpTarget, TargetBans the
	// cool-downs for it this worker started (stores implementing
	// pharox.TargetStore), up to mpTargetRecords each.
	TargetLeases []mpTargetLease `json:"target_leases,omitempty"`
	TargetBans   []mpTargetBan   `json:"target_bans,omitempty"`
	// CappedLeases are leases of the capped consumers (ConsumerCap), up
	// to mpCappedRecords; QuotaRefusals counts their acquisitions refused
	// by the cap.
	CappedLeases  []mpCappedLease `json:"capped_leases,omitempty"`
	QuotaRefusals int64           `json:"quota_refusals"`
}

// The quota part of a multi-process run (ConsumerCap): goroutines acquiring
// as one of mpCappedConsumers consumers hold each lease for a few
// milliseconds, long enough for the others of their consumer, in any
// process, to fill the cap; on a store whose acquisitions take longer
// than that, about as long as they take.
const (
	mpCappedConsumers = 3
	mpCappedRecords   = 20000
	mpCappedHoldMin   = 3 * time.Millisecond
	mpCappedHoldMax   = 12 * time.Millisecond
	// mpCappedSlack is taken off a lease's expiry when judging how long
	// it was held: the store's clock may run a little ahead of this
	// host's.
	mpCappedSlack = 100 * time.Millisecond
)

// mpCappedLease is a lease of capped consumer C as its worker held it:
// from AcquireLease returning (this host's wall clock) to ReleaseLease
// being called, or to its expiry if that came first. The store counted it
// active all that time.
type mpCappedLease struct {
	Consumer int       `json:"c"`
	From     time.Time `json:"f"`
	To       time.Time `json:"t"`
}

func cappedConsumerName(i int) string { return fmt.Sprintf("multiprocess-capped-%d", i) }

// movingAverage is an exponentially weighted average of durations, safe
// for concurrent use.
type movingAverage struct{ ns atomic.Int64 }

// note adds d and returns the average.
func (m *movingAverage) note(d time.Duration) time.Duration {
	for {
		old := m.ns.Load()
		avg := int64(d)
		if old != 0 {
			avg = (3*old + int64(d)) / 4
		}
		if m.ns.CompareAndSwap(old, avg) {
			return time.Duration(avg)
		}
	}
}

// The target part of a multi-process run: every third goroutine acquires
// for mpTarget and bans a quarter of the proxies it gets for it, with a
// short cool-down; the parent checks that no process leased a proxy for the
// target, by a call made after a ban of the proxy returned in any process,
// before that cool-down's end.
const (
	mpTarget        = "multiprocess.example"
	mpTargetCool    = 100 * time.Millisecond
	mpTargetRecords = 5000
)

// mpTargetLease is a lease for mpTarget: when AcquireLease was called
// (this host's wall clock, which every worker shares) and its AcquiredAt
// (the store's clock).
type mpTargetLease struct {
	Proxy  uuid.UUID `json:"p"`
	Called time.Time `json:"c"`
	At     time.Time `json:"a"`
}

// mpTargetBan is a cool-down for mpTarget: when ApplyTargetOutcome
// returned (wall clock) and the cool-down's start and end (store clock).
type mpTargetBan struct {
	Proxy uuid.UUID `json:"p"`
	Done  time.Time `json:"d"`
	From  time.Time `json:"f"`
	Until time.Time `json:"u"`
}

// IsWorkerProcess reports whether this process is a worker started by
// [RunMultiProcess]. Open functions use it to leave shared data alone.
func IsWorkerProcess() bool { return os.Getenv(envWorker) != "" }

// RunMultiProcess checks that a shared store keeps max_concurrency across
// processes. The parent opens the store in a fresh namespace, creates a pool
// of cfg.Proxies proxies with cfg.MaxConcurrency slots, and re-executes the
// test binary, running only the current test, as cfg.Processes workers.
// Each worker (the same test function, recognised by its environment) runs
// cfg.Goroutines goroutines that acquire and release, or abandon, leases for
// cfg.Duration while a cleaner calls CleanupExpiredLeases, then prints its
// tally. The parent then lets abandoned leases expire, cleans up and audits
// every lease record: intervals never exceed a proxy's limit at any instant,
// the records are exactly the acquisitions the workers made, every lease
// ended as released or expired matching what the workers did, and no proxy
// still counts a lease. A store implementing [pharox.LeaseVerdictStore]
// also has every worker claim one lease's verdict from each goroutine at
// once: exactly one claim in all the processes may be first. When the
// store implements [pharox.TargetStore], every third goroutine acquires for one target and bans some of the
// proxies it gets for it, and the parent also checks that no process leased
// a proxy for that target inside a cool-down any process started. With
// cfg.ConsumerCap, some goroutines acquire as consumers sharing a cap
// across the processes, and the parent checks from the intervals the
// workers held their leases that no consumer ever held more.
//
// Call it from its own top-level test (or subtest); code before the call
// runs in the workers too.
func RunMultiProcess(t *testing.T, cfg MultiProcessConfig) {
	t.Helper()
	cfg.defaults()
	if cfg.Open == nil {
		t.Fatal("storagetest: MultiProcessConfig.Open is nil")
	}
	if IsWorkerProcess() {
		if os.Getenv(envTest) != t.Name() {
			t.Skipf("storagetest: worker for %s, not %s", os.Getenv(envTest), t.Name())
		}
		runWorker(t, cfg)
		return
	}
	runParent(t, cfg)
}

func newNamespace() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return "stmp" + hex.EncodeToString(b[:])
}

// runPattern selects exactly the test named name (a subtest path allowed).
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

func runParent(t *testing.T, cfg MultiProcessConfig) {
	ctx := t.Context()
	ns := newNamespace()
	const poolName = "multiprocess"
	s := cfg.Open(t, ns)
	if s == nil {
		t.Fatal("storagetest: Open returned nil")
	}
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: poolName, Description: "storagetest multi-process audit"})
	if err != nil {
		t.Fatalf("CreatePool: %v", err)
	}
	in := make([]pharox.Proxy, cfg.Proxies)
	for i := range in {
		in[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.99.%d.%d", i/250, i%250+1), Port: 3128 + i,
			Protocol: pharox.ProtocolHTTP, MaxConcurrency: ptrutil.Ptr(cfg.MaxConcurrency)}
	}
	proxies, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatalf("AddProxies: %v", err)
	}
	maxc := map[uuid.UUID]int{}
	for _, p := range proxies {
		maxc[p.ID] = cfg.MaxConcurrency
	}
	// One ended lease whose verdict the workers race to claim.
	var verdictLease uuid.UUID
	if _, ok := s.(pharox.LeaseVerdictStore); ok {
		vc, err := s.EnsureConsumer(ctx, "multiprocess-verdict")
		if err != nil {
			t.Fatalf("EnsureConsumer(verdict): %v", err)
		}
		l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: poolName, ConsumerID: vc.ID, ConsumerName: vc.Name,
			Duration: time.Minute, Strategy: pharox.FirstAvailable})
		if err != nil {
			t.Fatalf("AcquireLease(verdict lease): %v", err)
		}
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			t.Fatalf("ReleaseLease(verdict lease): %v", err)
		}
		verdictLease = l.ID
	}
	if cfg.ConsumerCap > 0 {
		for i := range mpCappedConsumers {
			c, err := s.EnsureConsumer(ctx, cappedConsumerName(i))
			if err != nil {
				t.Fatalf("EnsureConsumer(%s): %v", cappedConsumerName(i), err)
			}
			if _, err := s.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID,
				QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: cfg.ConsumerCap}}); err != nil {
				t.Fatalf("SetQuota(%s): %v", cappedConsumerName(i), err)
			}
		}
	}

	t.Logf("namespace %s: %d processes x %d goroutines for %v on %d proxies of max %d",
		ns, cfg.Processes, cfg.Goroutines, cfg.Duration, cfg.Proxies, cfg.MaxConcurrency)
	tallies := make([]*workerTally, cfg.Processes)
	var wg sync.WaitGroup
	started := time.Now()
	for i := range cfg.Processes {
		wg.Go(func() {
			tallies[i] = runWorkerProcess(t, ctx, cfg, i, ns, poolName, verdictLease)
		})
	}
	wg.Wait()
	elapsed := time.Since(started)
	if t.Failed() {
		t.FailNow()
	}

	var sum workerTally
	var shared uuid.UUID
	for _, w := range tallies {
		sum.Acquired += w.Acquired
		sum.Released += w.Released
		sum.Late += w.Late
		sum.Abandoned += w.Abandoned
		sum.Misses += w.Misses
		sum.Cleaned += w.Cleaned
		sum.Errors += w.Errors
		sum.VerdictsWon += w.VerdictsWon
		sum.QuotaRefusals += w.QuotaRefusals
		for _, e := range w.FirstErrors {
			t.Errorf("worker %d: %s", w.Worker, e)
		}
		if shared == uuid.Nil {
			shared = w.SharedConsumer
		} else if w.SharedConsumer != shared {
			t.Errorf("EnsureConsumer of one name gave worker %d id %s, another worker %s", w.Worker, w.SharedConsumer, shared)
		}
	}
	t.Logf("workers: %d acquired, %d released, %d released too late, %d abandoned, %d misses, %d cleaned, %d errors in %v (%.0f acquisitions/s)",
		sum.Acquired, sum.Released, sum.Late, sum.Abandoned, sum.Misses, sum.Cleaned, sum.Errors,
		elapsed.Round(time.Millisecond), float64(sum.Acquired)/cfg.Duration.Seconds())
	if sum.Errors > 0 {
		t.Errorf("workers reported %d errors", sum.Errors)
	}
	if sum.Acquired == 0 {
		t.Fatal("no worker acquired a lease")
	}
	if verdictLease != uuid.Nil {
		if sum.VerdictsWon != 1 {
			t.Errorf("%d of %d concurrent ClaimLeaseVerdict calls across %d processes were first, want exactly 1",
				sum.VerdictsWon, cfg.Processes*cfg.Goroutines, cfg.Processes)
		}
		// The verdict lease is one more acquired and released lease.
		sum.Acquired++
		sum.Released++
	}
	auditTargets(t, tallies)
	if cfg.ConsumerCap > 0 {
		auditConsumerCap(t, tallies, cfg.ConsumerCap, sum.QuotaRefusals)
	}

	// Let the abandoned (and any unreleased) leases expire, then reclaim.
	cleaned := ReclaimAfterExpiry(t, s, pool.ID)

	leases, err := s.ListLeases(ctx, pharox.LeaseQuery{PoolID: pool.ID})
	if err != nil {
		t.Fatalf("ListLeases: %v", err)
	}
	var nReleased, nExpired int64
	seen := map[uuid.UUID]bool{}
	for _, l := range leases {
		if seen[l.ID] {
			t.Errorf("lease %s listed twice", l.ID)
		}
		seen[l.ID] = true
		switch l.Status {
		case pharox.LeaseReleased:
			nReleased++
		case pharox.LeaseExpired:
			nExpired++
		default:
			t.Errorf("lease %s on proxy %s is %s after every lease expired and cleanup ran (expires %v)",
				l.ID, l.ProxyID, l.Status, l.ExpiresAt)
		}
	}
	// (1) No instant with more leases on a proxy than it allows.
	AuditLeases(t, leases, maxc)
	// (2) No lease lost, none invented.
	if int64(len(leases)) != sum.Acquired {
		t.Errorf("the store has %d lease records, the workers acquired %d leases", len(leases), sum.Acquired)
	}
	// (4) Every successful release is a released lease; everything else
	// expired.
	if nReleased != sum.Released {
		t.Errorf("the store has %d released leases, the workers released %d", nReleased, sum.Released)
	}
	if nExpired != sum.Abandoned+sum.Late {
		t.Errorf("the store has %d expired leases, the workers abandoned %d and were too late to release %d",
			nExpired, sum.Abandoned, sum.Late)
	}
	if total := sum.Cleaned + int64(cleaned); total > nExpired {
		t.Errorf("CleanupExpiredLeases calls reported %d leases ended, but only %d leases expired (counted twice?)", total, nExpired)
	}
	// (3) No proxy still counts a lease.
	ps, err := s.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatalf("ListProxies: %v", err)
	}
	for _, p := range ps {
		if p.CurrentLeases != 0 {
			t.Errorf("proxy %s CurrentLeases = %d after every lease ended, want 0", p.ID, p.CurrentLeases)
		}
	}
	st, err := s.GetPoolStats(ctx, poolName)
	if err != nil {
		t.Fatalf("GetPoolStats: %v", err)
	}
	if st.TotalLeases != 0 || st.LeasedProxies != 0 || st.AvailableProxies != cfg.Proxies {
		t.Errorf("stats after the run: %d leases on %d proxies, %d available; want 0, 0, %d",
			st.TotalLeases, st.LeasedProxies, st.AvailableProxies, cfg.Proxies)
	}
	t.Logf("audit: %d leases (%d released, %d expired)", len(leases), nReleased, nExpired)
}

// runWorkerProcess starts worker i and returns its tally, failing t (not
// fatally: it runs on its own goroutine) if the worker did not report.
func runWorkerProcess(t *testing.T, ctx context.Context, cfg MultiProcessConfig, i int, ns, pool string, verdictLease uuid.UUID) *workerTally {
	timeout := cfg.Duration + 2*time.Minute
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0],
		"-test.run="+runPattern(t.Name()), "-test.count=1", "-test.v", "-test.timeout="+timeout.String())
	cmd.Env = append(os.Environ(),
		envWorker+"="+strconv.Itoa(i),
		envTest+"="+t.Name(),
		envNamespace+"="+ns,
		envPool+"="+pool,
		envDuration+"="+cfg.Duration.String(),
	)
	if verdictLease != uuid.Nil {
		cmd.Env = append(cmd.Env, envVerdict+"="+verdictLease.String())
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var tally *workerTally
	sc := bufio.NewScanner(bytes.NewReader(stdout.Bytes()))
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, tallyPrefix); ok {
			var w workerTally
			if jerr := json.Unmarshal([]byte(rest), &w); jerr != nil {
				t.Errorf("worker %d: bad tally %q: %v", i, rest, jerr)
				continue
			}
			tally = &w
		}
	}
	if err != nil || tally == nil {
		t.Errorf("worker %d: exit %v, tally found %v\nstdout:\n%s\nstderr:\n%s", i, err, tally != nil, tail(stdout.String()), tail(stderr.String()))
		if tally == nil {
			tally = &workerTally{Worker: i}
		}
	}
	return tally
}

func tail(s string) string {
	const max = 4000
	if len(s) > max {
		return "..." + s[len(s)-max:]
	}
	return s
}

// targetRecord notes a lease taken for mpTarget by a call made at called
// and, for a quarter of them, bans its proxy for the target and notes the
// cool-down.
func targetRecord(ctx context.Context, ts pharox.TargetStore, l *pharox.Lease, called time.Time, mu *sync.Mutex, tally *workerTally, fail func(string, ...any)) {
	var ban *mpTargetBan
	if mrand.IntN(4) == 0 {
		p := pharox.DefaultTargetPolicy()
		p.BaseCooldown, p.MaxCooldown = mpTargetCool, mpTargetCool
		st, _, err := ts.ApplyTargetOutcome(ctx, pharox.TargetOutcome{ProxyID: l.ProxyID, Target: mpTarget, Kind: pharox.OutcomeBanned}, p)
		if err != nil {
			fail("ApplyTargetOutcome: %v", err)
		} else if st.BannedAt != nil && st.CoolingUntil != nil && st.BannedAt.Equal(st.UpdatedAt) {
			ban = &mpTargetBan{Proxy: l.ProxyID, Done: time.Now(), From: *st.BannedAt, Until: *st.CoolingUntil}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(tally.TargetLeases) < mpTargetRecords {
		tally.TargetLeases = append(tally.TargetLeases, mpTargetLease{Proxy: l.ProxyID, Called: called, At: l.AcquiredAt})
	}
	if ban != nil && len(tally.TargetBans) < mpTargetRecords {
		tally.TargetBans = append(tally.TargetBans, *ban)
	}
}

// auditTargets checks that no lease for mpTarget, from any worker, was
// taken by a call made after a ban of its proxy, by any worker, had
// returned, before that cool-down's end. (A call running while the ban is
// applied may go either way: a store that is not one lock reads the ban's
// clock, BannedAt, before the ban commits.)
func auditTargets(t *testing.T, tallies []*workerTally) {
	t.Helper()
	bans := map[uuid.UUID][]mpTargetBan{}
	var nLeases, nBans int
	for _, w := range tallies {
		for _, b := range w.TargetBans {
			bans[b.Proxy] = append(bans[b.Proxy], b)
			nBans++
		}
		nLeases += len(w.TargetLeases)
	}
	if nLeases == 0 {
		return // the store keeps no per-target health
	}
	bad := 0
	for _, w := range tallies {
		for _, l := range w.TargetLeases {
			for _, b := range bans[l.Proxy] {
				if l.Called.After(b.Done) && l.At.Before(b.Until) {
					if bad++; bad <= 5 {
						t.Errorf("worker %d leased proxy %s for %q at %v, by a call made at %v, after a ban returned at %v, inside its cool-down from %v until %v",
							w.Worker, l.Proxy, mpTarget, l.At, l.Called, b.Done, b.From, b.Until)
					}
				}
			}
		}
	}
	t.Logf("targets: %d leases for %q checked against %d cool-downs from every process", nLeases, mpTarget, nBans)
}

// auditConsumerCap checks that no capped consumer held more than limit
// leases at once, judged from the intervals every worker held them (see
// mpCappedLease), and that one reached the cap.
func auditConsumerCap(t testing.TB, tallies []*workerTally, limit int, refusals int64) {
	t.Helper()
	byConsumer := make([][]heldInterval, mpCappedConsumers)
	n := 0
	for _, w := range tallies {
		for _, l := range w.CappedLeases {
			if l.Consumer < 0 || l.Consumer >= mpCappedConsumers || l.To.Before(l.From) {
				t.Errorf("worker %d reported a malformed capped lease %+v", w.Worker, l)
				continue
			}
			byConsumer[l.Consumer] = append(byConsumer[l.Consumer], heldInterval{l.From, l.To})
			n++
		}
	}
	if n == 0 {
		t.Errorf("consumer cap: no worker leased as a capped consumer")
		return
	}
	peak := 0
	for i, ivs := range byConsumer {
		p := maxOverlap(ivs)
		peak = max(peak, p)
		if p > limit {
			t.Errorf("consumer %s with max_concurrent_leases=%d held %d leases at once across the processes", cappedConsumerName(i), limit, p)
		}
	}
	if peak < limit {
		t.Errorf("consumer cap: no capped consumer ever held its %d leases at once (at most %d): the cap was never reached, so the audit judged nothing", limit, peak)
	}
	t.Logf("consumer cap: %d leases of %d consumers capped at %d, at most %d held at once, %d refusals",
		n, mpCappedConsumers, limit, peak, refusals)
}

func runWorker(t *testing.T, cfg MultiProcessConfig) {
	ctx := t.Context()
	idx, _ := strconv.Atoi(os.Getenv(envWorker))
	ns, poolName := os.Getenv(envNamespace), os.Getenv(envPool)
	d, err := time.ParseDuration(os.Getenv(envDuration))
	if err != nil || ns == "" || poolName == "" {
		t.Fatalf("storagetest worker: bad environment: namespace %q pool %q duration %q", ns, poolName, os.Getenv(envDuration))
	}
	s := cfg.Open(t, ns)
	if s == nil {
		t.Fatal("storagetest worker: Open returned nil")
	}
	tally := workerTally{Worker: idx}
	var mu sync.Mutex
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		tally.Errors++
		if len(tally.FirstErrors) < 5 {
			tally.FirstErrors = append(tally.FirstErrors, fmt.Sprintf(format, args...))
		}
	}
	shared, err := s.EnsureConsumer(ctx, "multiprocess-shared")
	if err != nil {
		t.Fatalf("EnsureConsumer(shared): %v", err)
	}
	tally.SharedConsumer = shared.ID
	own, err := s.EnsureConsumer(ctx, fmt.Sprintf("multiprocess-worker-%d", idx))
	if err != nil {
		t.Fatalf("EnsureConsumer: %v", err)
	}

	var capped []*pharox.Consumer
	if cfg.ConsumerCap > 0 {
		for i := range mpCappedConsumers {
			c, err := s.EnsureConsumer(ctx, cappedConsumerName(i))
			if err != nil {
				t.Fatalf("EnsureConsumer(%s): %v", cappedConsumerName(i), err)
			}
			capped = append(capped, c)
		}
	}

	if v := os.Getenv(envVerdict); v != "" {
		tally.VerdictsWon = claimVerdictFromAll(ctx, s, v, cfg.Goroutines, fail)
	}

	var acquired, released, late, abandoned, misses, cleaned, refusals atomic.Int64
	var cappedTook movingAverage
	deadline := time.Now().Add(d)
	stop := make(chan struct{})
	var cleaner sync.WaitGroup
	cleaner.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			n, err := s.CleanupExpiredLeases(ctx)
			if err != nil {
				fail("CleanupExpiredLeases: %v", err)
				continue
			}
			cleaned.Add(int64(n))
		}
	})
	var wg sync.WaitGroup
	for g := range cfg.Goroutines {
		wg.Go(func() {
			consumer := own
			if g%2 == 1 {
				consumer = shared
			}
			// Every fourth goroutine acquires as a capped consumer, if
			// any, and never abandons (an expiry would end its interval
			// at the store's clock).
			cappedIdx := -1
			if capped != nil && g%4 == 3 {
				cappedIdx = (idx + g/4) % len(capped)
				consumer = capped[cappedIdx]
			}
			req := pharox.AcquireRequest{
				PoolName: poolName, ConsumerID: consumer.ID, ConsumerName: consumer.Name,
				Strategy: pharox.AllStrategies[(g+idx)%len(pharox.AllStrategies)],
			}
			if g%5 == 4 {
				req.SessionKey, req.SessionTTL = fmt.Sprintf("mp-session-%d", g%3), 10*time.Second
			}
			ts := pharox.TargetStore(s)
			forTarget := g%3 == 2
			if forTarget {
				req.Target = mpTarget
			}
			for n := 0; time.Now().Before(deadline); n++ {
				// Every fourth goroutine abandons its first lease, so each
				// run has expired leases to reclaim however slow the
				// store; later ones are abandoned at random.
				abandon := cappedIdx < 0 && (n == 0 && g%4 == 0 || mrand.IntN(mpAbandonEvery) == 0)
				req.Duration = mpLease
				if abandon {
					req.Duration = mpAbandonedLease
				}
				called := time.Now()
				l, err := s.AcquireLease(ctx, req)
				if errors.Is(err, pharox.ErrNoProxyAvailable) {
					misses.Add(1)
					time.Sleep(time.Duration(1+mrand.IntN(4)) * time.Millisecond)
					continue
				}
				if qe, ok := errors.AsType[*pharox.QuotaError](err); ok && cappedIdx >= 0 && qe.Limit == pharox.LimitMaxConcurrentLeases {
					refusals.Add(1)
					time.Sleep(time.Duration(mrand.IntN(1000)) * time.Microsecond)
					continue
				}
				if err != nil {
					fail("AcquireLease: %v", err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				acquired.Add(1)
				if forTarget {
					targetRecord(ctx, ts, l, called, &mu, &tally, fail)
				}
				if abandon {
					abandoned.Add(1)
					continue
				}
				if cappedIdx >= 0 {
					from := time.Now()
					hold := mpCappedHoldMin + mrand.N(mpCappedHoldMax-mpCappedHoldMin)
					if took := cappedTook.note(from.Sub(called)); took > hold {
						// A few milliseconds' holds rarely overlap when
						// each acquisition takes far longer (FerretDB on a
						// busy machine): the cap would never be reached.
						// Hold about as long as this worker's capped
						// acquisitions take, the time another needs to
						// join, at most half a lease.
						hold = min(took*3/4+mrand.N(took/2), mpLease/2)
					}
					time.Sleep(hold)
					to := time.Now()
					if end := called.Add(req.Duration - mpCappedSlack); to.After(end) {
						to = end // stalled: the lease may have expired first
					}
					if to.Before(from) {
						to = from
					}
					mu.Lock()
					if len(tally.CappedLeases) < mpCappedRecords {
						tally.CappedLeases = append(tally.CappedLeases, mpCappedLease{Consumer: cappedIdx, From: from, To: to})
					}
					mu.Unlock()
				} else {
					time.Sleep(time.Duration(mrand.IntN(2000)) * time.Microsecond)
				}
				_, err = s.ReleaseLease(context.WithoutCancel(ctx), l.ID, nil)
				switch {
				case err == nil:
					released.Add(1)
				case errors.Is(err, pharox.ErrLeaseNotActive):
					late.Add(1) // stalled past ExpiresAt; the lease expired
				default:
					fail("ReleaseLease(%s): %v", l.ID, err)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	cleaner.Wait()

	mu.Lock()
	tally.Acquired, tally.Released, tally.Late = acquired.Load(), released.Load(), late.Load()
	tally.Abandoned, tally.Misses, tally.Cleaned = abandoned.Load(), misses.Load(), cleaned.Load()
	tally.QuotaRefusals = refusals.Load()
	out, err := json.Marshal(tally)
	mu.Unlock()
	if err != nil {
		t.Fatalf("marshal tally: %v", err)
	}
	// Printed, not logged: the parent parses stdout.
	fmt.Printf("\n%s%s\n", tallyPrefix, out)
}

// claimVerdictFromAll claims the named lease's verdict from n goroutines
// at once and returns how many claims were first.
func claimVerdictFromAll(ctx context.Context, s pharox.Storage, lease string, n int, fail func(string, ...any)) int64 {
	vs := pharox.LeaseVerdictStore(s)
	id, err := uuid.Parse(lease)
	if err != nil {
		fail("verdict lease %q on %T: %v", lease, s, err)
		return 0
	}
	var won atomic.Int64
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			first, err := vs.ClaimLeaseVerdict(ctx, id)
			if err != nil {
				fail("ClaimLeaseVerdict(%s): %v", id, err)
			}
			if first {
				won.Add(1)
			}
		})
	}
	wg.Wait()
	return won.Load()
}
