// Package storagetest is the executable form of the [pharox.Storage]
// contract: every storage driver runs [Run] from its own tests, and drivers
// shared between processes also run [RunMultiProcess].
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T) pharox.Storage {
//			s, err := memory.New()
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
// Every subtest gets a fresh, empty store from the factory. Subtests run in
// parallel (t.Parallel; go test's -parallel sets how many at once), except
// the Stress, StickyConcurrency and QuotaConcurrency sections, which run
// first and alone, so
// the factory must be safe to call concurrently and the stores it returns
// must not share data.
// Subtests are grouped (Pools, Proxies, Consumers, Leases, Expiry, Filters,
// Strategies, Sessions, Stats, Health, Copies, LeaseRecords, Stress,
// StickyConcurrency, QuotaConcurrency, LeaseIDs, CheckedAt, LargePool,
// Keys, Audit, LeaseVerdicts, Targets, Usage, Quotas), so a
// driver can select some with -run 'TestConformance/Leases/'.
//
// Where the contract lets stores differ (a release after expiry, filter
// predicates), the store declares its behaviour with [WithCapabilities]
// and the suite asserts it.
//
// The suite checks behaviour through the public interface only and uses the
// root package's reference functions ([pharox.Filters.Match],
// [pharox.Proxy.ApplyHealthCheck], [pharox.CompareFirstAvailable],
// [pharox.CompareLeastUsed], [pharox.HaversineKM]) as oracles, next to
// hand-written expectations; the Targets section, which runs when the store
// implements [pharox.TargetStore] and is skipped otherwise, compares the
// store with [pharox.TargetState.Apply]; the Usage and Quotas sections use
// [pharox.Quota.Admit] and its siblings' rules and totals the suite
// computes from the usage it reported. It never asserts on speed. Expiry tests rely
// on a 150ms lease having expired 300ms later by the store's clock, so that
// clock must agree with the test process's (the database on the same host,
// or a synchronised one).
//
// The LargePool section stores [DefaultLargePoolSize] proxies, leases all
// but a few dozen slots and checks every strategy and filter shape against
// the reference there; [WithLargePoolSize] and [WithoutLargePoolInShort]
// adjust it. [BenchmarkScale] is the matching benchmark: how the cost of an
// acquisition grows with the pool and its busy proxies; [BenchmarkTargets]
// compares acquiring for a target that half the pool cools down for with
// acquiring without one. [Benchmark] is the pair benchmark every store runs
// (pairs/s and CPU per pair, beside the driver's own same-run baselines),
// and [Pairs] its timed loop.
//
// [AuditLeases] is the interval audit the stress tests use; drivers may run
// it on their own lease records. [RunMultiProcess] re-executes the test
// binary as worker processes; its Open function learns from
// [IsWorkerProcess] whether it runs in a worker.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
)

// Run runs the conformance suite against the stores newStore returns. It
// calls newStore once per subtest; each call must return a fresh, empty
// store and register its cleanup with t.Cleanup. Options adjust the
// LargePool section.
func Run(t *testing.T, newStore func(t *testing.T) pharox.Storage, opts ...Option) {
	t.Helper()
	cfg := newConfig(opts)
	for _, g := range sections {
		t.Run(g.name, func(t *testing.T) {
			if !g.serial {
				t.Parallel()
			}
			for _, st := range g.tests {
				t.Run(st.name, func(t *testing.T) {
					if !g.serial {
						t.Parallel()
					}
					f := newFixture(t, newStore)
					f.cfg = cfg
					st.fn(t, f)
				})
			}
		})
	}
}

// section is one group of subtests, TestConformance/<name>/<subtest>.
type section struct {
	name  string
	tests []subtest
	// serial sections run first, one subtest at a time and alone: the
	// stress and concurrency sections, whose goroutines would otherwise
	// compete with every other subtest. Every other section and subtest
	// runs in parallel (t.Parallel), under go test's -parallel limit.
	serial bool
}

// sections lists the suite. A new section is added here and is parallel
// by default: its subtests must not depend on timing that other load
// could upset, each works on the fresh store its fixture has, and the
// store factory is called concurrently. A stress or timing-sensitive
// section sets serial.
var sections = []section{
	{name: "Stress", tests: stressTests, serial: true},
	{name: "StickyConcurrency", tests: stickyConcurrencyTests, serial: true},
	{name: "QuotaConcurrency", tests: quotaConcurrencyTests, serial: true},
	{name: "Pools", tests: poolTests},
	{name: "Proxies", tests: proxyTests},
	{name: "Consumers", tests: consumerTests},
	{name: "Leases", tests: leaseTests},
	{name: "Expiry", tests: expiryTests},
	{name: "Filters", tests: filterTests},
	{name: "Strategies", tests: strategyTests},
	{name: "Sessions", tests: sessionTests},
	{name: "Stats", tests: statsTests},
	{name: "Health", tests: healthTests},
	{name: "Copies", tests: copyTests},
	{name: "LeaseRecords", tests: leaseRecordTests},
	{name: "LeaseIDs", tests: leaseIDTests},
	{name: "CheckedAt", tests: checkedAtTests},
	{name: "LargePool", tests: largePoolTests},
	{name: "Keys", tests: keyTests},
	{name: "Audit", tests: auditTests},
	{name: "LeaseVerdicts", tests: leaseVerdictTests},
	{name: "Targets", tests: targetTests},
	{name: "Usage", tests: usageTests},
	{name: "Quotas", tests: quotaTests},
}

// subtest is one behaviour of the contract.
type subtest struct {
	name string
	fn   func(t *testing.T, f *fixture)
}

// clockSlack is how far the store's clock may be from the test process's
// when the suite checks a timestamp's plausibility (never its precision).
const clockSlack = 5 * time.Second

// Short lease and TTL used by expiry tests, and how long to wait for them to
// pass.
const (
	shortTTL  = 150 * time.Millisecond
	shortWait = 300 * time.Millisecond
)

// fixture carries one subtest's store and the usual helpers.
type fixture struct {
	t        *testing.T
	ctx      context.Context
	s        pharox.Storage
	consumer *pharox.Consumer
	nextPort int
	cfg      config
}

func newFixture(t *testing.T, newStore func(t *testing.T) pharox.Storage) *fixture {
	t.Helper()
	s := newStore(t)
	if s == nil {
		t.Fatal("newStore returned nil")
	}
	f := &fixture{t: t, ctx: t.Context(), s: s, nextPort: 10000}
	c, err := s.EnsureConsumer(f.ctx, "storagetest")
	if err != nil {
		t.Fatalf("EnsureConsumer(storagetest): %v", err)
	}
	f.consumer = c
	return f
}

// pool creates a pool with the given name.
func (f *fixture) pool(name string) *pharox.Pool {
	f.t.Helper()
	p, err := f.s.CreatePool(f.ctx, pharox.Pool{Name: name, Description: "storagetest " + name})
	if err != nil {
		f.t.Fatalf("CreatePool(%q): %v", name, err)
	}
	return p
}

// proxy returns a valid, distinct proxy for pool: http, active, unlimited.
func (f *fixture) proxy(pool *pharox.Pool) pharox.Proxy {
	f.nextPort++
	return pharox.Proxy{
		PoolID:   pool.ID,
		Host:     fmt.Sprintf("10.%d.%d.%d", f.nextPort>>16&255, f.nextPort>>8&255, f.nextPort&255),
		Port:     f.nextPort,
		Protocol: pharox.ProtocolHTTP,
		Status:   pharox.StatusActive,
	}
}

// add stores proxies and returns the stored copies in input order.
func (f *fixture) add(ps ...pharox.Proxy) []*pharox.Proxy {
	f.t.Helper()
	out, err := f.s.AddProxies(f.ctx, ps)
	if err != nil {
		f.t.Fatalf("AddProxies(%d proxies): %v", len(ps), err)
	}
	if len(out) != len(ps) {
		f.t.Fatalf("AddProxies(%d proxies) returned %d", len(ps), len(out))
	}
	return out
}

// addN stores n proxies with the given max concurrency (0 = unlimited).
func (f *fixture) addN(pool *pharox.Pool, n, maxc int) []*pharox.Proxy {
	f.t.Helper()
	ps := make([]pharox.Proxy, n)
	for i := range ps {
		ps[i] = f.proxy(pool)
		if maxc > 0 {
			ps[i].MaxConcurrency = ptrutil.Ptr(maxc)
		}
	}
	return f.add(ps...)
}

// req returns a valid acquisition request for pool: one minute,
// first_available, the fixture's consumer.
func (f *fixture) req(pool string) pharox.AcquireRequest {
	return pharox.AcquireRequest{
		PoolName:     pool,
		ConsumerID:   f.consumer.ID,
		ConsumerName: f.consumer.Name,
		Duration:     time.Minute,
		Strategy:     pharox.FirstAvailable,
	}
}

// acquire takes a lease and fails the test on error.
func (f *fixture) acquire(req pharox.AcquireRequest) *pharox.Lease {
	f.t.Helper()
	l, err := f.s.AcquireLease(f.ctx, req)
	if err != nil {
		f.t.Fatalf("AcquireLease(pool %q, strategy %s, session %q): %v", req.PoolName, req.Strategy, req.SessionKey, err)
	}
	if l == nil {
		f.t.Fatalf("AcquireLease(pool %q) returned a nil lease and no error", req.PoolName)
	}
	return l
}

// noProxy asserts that AcquireLease fails with ErrNoProxyAvailable.
func (f *fixture) noProxy(req pharox.AcquireRequest, why string) {
	f.t.Helper()
	l, err := f.s.AcquireLease(f.ctx, req)
	if !errors.Is(err, pharox.ErrNoProxyAvailable) {
		f.t.Fatalf("AcquireLease (%s): got lease %v, err %v; want ErrNoProxyAvailable", why, leaseProxy(l), err)
	}
}

func (f *fixture) release(id uuid.UUID) *pharox.Lease {
	f.t.Helper()
	l, err := f.s.ReleaseLease(f.ctx, id, nil)
	if err != nil {
		f.t.Fatalf("ReleaseLease(%s): %v", id, err)
	}
	return l
}

func (f *fixture) getProxy(id uuid.UUID) *pharox.Proxy {
	f.t.Helper()
	p, err := f.s.GetProxy(f.ctx, id)
	if err != nil {
		f.t.Fatalf("GetProxy(%s): %v", id, err)
	}
	return p
}

func (f *fixture) getLease(id uuid.UUID) *pharox.Lease {
	f.t.Helper()
	l, err := f.s.GetLease(f.ctx, id)
	if err != nil {
		f.t.Fatalf("GetLease(%s): %v", id, err)
	}
	return l
}

func (f *fixture) setStatus(id uuid.UUID, st pharox.ProxyStatus) *pharox.Proxy {
	f.t.Helper()
	p, err := f.s.SetProxyStatus(f.ctx, id, st)
	if err != nil {
		f.t.Fatalf("SetProxyStatus(%s, %s): %v", id, st, err)
	}
	return p
}

func (f *fixture) leases(q pharox.LeaseQuery) []*pharox.Lease {
	f.t.Helper()
	ls, err := f.s.ListLeases(f.ctx, q)
	if err != nil {
		f.t.Fatalf("ListLeases(%+v): %v", q, err)
	}
	return ls
}

func (f *fixture) stats(pool string) *pharox.PoolStats {
	f.t.Helper()
	st, err := f.s.GetPoolStats(f.ctx, pool)
	if err != nil {
		f.t.Fatalf("GetPoolStats(%q): %v", pool, err)
	}
	if st == nil {
		f.t.Fatalf("GetPoolStats(%q) returned nil and no error", pool)
	}
	return st
}

// wantCurrent asserts a proxy's CurrentLeases as stored.
func (f *fixture) wantCurrent(id uuid.UUID, want int) {
	f.t.Helper()
	if got := f.getProxy(id).CurrentLeases; got != want {
		f.t.Fatalf("proxy %s CurrentLeases = %d, want %d", id, got, want)
	}
}

// wantErr asserts errors.Is(err, want).
func wantErr(t testing.TB, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
}

func leaseProxy(l *pharox.Lease) string {
	if l == nil {
		return "<nil>"
	}
	return l.ProxyID.String()
}

func compareID(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) }

// sortedIDs returns the proxies' ids in ascending order.
func sortedIDs(ps []*pharox.Proxy) []uuid.UUID {
	ids := make([]uuid.UUID, len(ps))
	for i, p := range ps {
		ids[i] = p.ID
	}
	slices.SortFunc(ids, compareID)
	return ids
}

// names maps proxy ids to short labels for readable failures.
type names map[uuid.UUID]string

func (n names) of(id uuid.UUID) string {
	if s, ok := n[id]; ok {
		return s
	}
	return id.String()
}

func (n names) list(ids []uuid.UUID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = n.of(id)
	}
	return out
}

// plausibleNow asserts that ts is a UTC reading of the store's clock taken
// between before and after (with clockSlack for shared stores).
func plausibleNow(t testing.TB, what string, ts, before, after time.Time) {
	t.Helper()
	if ts.IsZero() {
		t.Fatalf("%s is zero", what)
	}
	if _, off := ts.Zone(); off != 0 {
		t.Errorf("%s = %v is not in UTC", what, ts)
	}
	if ts.Before(before.Add(-clockSlack)) || ts.After(after.Add(clockSlack)) {
		t.Errorf("%s = %v, want between %v and %v (±%v)", what, ts, before, after, clockSlack)
	}
}

// drain acquires with req until ErrNoProxyAvailable and returns the leases.
// Limit bounds the loop so a store that never runs out fails cleanly.
func (f *fixture) drain(req pharox.AcquireRequest, limit int) ([]*pharox.Lease, error) {
	f.t.Helper()
	var out []*pharox.Lease
	for range limit {
		l, err := f.s.AcquireLease(f.ctx, req)
		if errors.Is(err, pharox.ErrNoProxyAvailable) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, l)
	}
	f.t.Fatalf("AcquireLease kept succeeding after %d leases on max-concurrency-limited proxies", limit)
	return out, nil
}

func (f *fixture) releaseAll(ls []*pharox.Lease) {
	f.t.Helper()
	for _, l := range ls {
		f.release(l.ID)
	}
}
