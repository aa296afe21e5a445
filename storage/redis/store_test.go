package redis

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/redistest"
)

func TestNewRejectsBadInput(t *testing.T) {
	if _, err := New(nil); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Errorf("New(nil) err = %v, want ErrInvalidArgument", err)
	}
	c := redistest.Client(t)
	if _, err := New(c, WithPrefix("")); !errors.Is(err, pharox.ErrInvalidArgument) {
		t.Errorf("New with empty prefix: err = %v, want ErrInvalidArgument", err)
	}
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if s.Prefix() != DefaultPrefix {
		t.Errorf("default prefix = %q, want %q", s.Prefix(), DefaultPrefix)
	}
}

func TestPredicateUnsupported(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	if _, err := s.CreatePool(ctx, pharox.Pool{Name: "p"}); err != nil {
		t.Fatal(err)
	}
	f := &pharox.Filters{AnyOf: []pharox.Filters{{Predicate: func(*pharox.Proxy) bool { return true }}}}
	if _, err := s.FindAvailableProxy(ctx, "p", f, pharox.FirstAvailable); !errors.Is(err, pharox.ErrUnsupported) {
		t.Errorf("FindAvailableProxy with nested predicate: err = %v, want ErrUnsupported", err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute,
		Strategy: pharox.FirstAvailable, Filters: f})
	if !errors.Is(err, pharox.ErrUnsupported) {
		t.Errorf("AcquireLease with nested predicate: err = %v, want ErrUnsupported", err)
	}
}

// TestPrefixesIsolate runs two stores on one Redis under different prefixes.
func TestPrefixesIsolate(t *testing.T) {
	a, b := newTestStore(t), newTestStore(t)
	ctx := t.Context()
	if _, err := a.CreatePool(ctx, pharox.Pool{Name: "same"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetPoolByName(ctx, "same"); !errors.Is(err, pharox.ErrPoolNotFound) {
		t.Errorf("store b sees store a's pool: err = %v", err)
	}
	if _, err := b.CreatePool(ctx, pharox.Pool{Name: "same"}); err != nil {
		t.Errorf("store b cannot create a pool named like store a's: %v", err)
	}
}

// keysUnder lists the keys under the store's prefix, without it.
func keysUnder(t *testing.T, s *Store) []string {
	t.Helper()
	var out []string
	iter := s.rdb.Scan(t.Context(), 0, redistest.EscapeGlob(s.prefix)+"*", 1000).Iterator()
	for iter.Next(t.Context()) {
		out = append(out, strings.TrimPrefix(iter.Val(), s.prefix))
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// TestDeleteLeavesNoKeys checks that deleting proxies and pools removes
// every key they used: indexes, geo sets, sessions, ended leases and their
// verdicts, per-target entries and their indexes.
func TestDeleteLeavesNoKeys(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"one", "two"} {
		pool, err := s.CreatePool(ctx, pharox.Pool{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		ps, err := s.AddProxies(ctx, []pharox.Proxy{
			{PoolID: pool.ID, Host: "10.0.0.1", Port: 1, Protocol: pharox.ProtocolHTTP, Country: "DE", City: "Berlin",
				Source: "s", ISP: "i", ASN: ptrutil.Ptr(3320), Tags: []string{"x", "y"}, Latitude: ptrutil.Ptr(52.5), Longitude: ptrutil.Ptr(13.4),
				Credentials: &pharox.Credentials{User: "u", Password: "secret"}, MaxConcurrency: ptrutil.Ptr(1)},
			{PoolID: pool.ID, Host: "10.0.0.2", Port: 2, Protocol: pharox.ProtocolSOCKS5, Latitude: ptrutil.Ptr(89.0), Longitude: ptrutil.Ptr(0.0)},
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{"k1", "k2"} {
			l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: name, ConsumerID: c.ID, Duration: time.Minute,
				Strategy: pharox.RoundRobin, SessionKey: key, SessionTTL: time.Minute,
				Filters: &pharox.Filters{Latitude: ptrutil.Ptr(60.0), Longitude: ptrutil.Ptr(10.0), RadiusKM: ptrutil.Ptr(20000.0)}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
				t.Fatal(err)
			}
			// A verdict and per-target entries, cooling and not.
			if _, err := s.ClaimLeaseVerdict(ctx, l.ID); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range ps {
			for _, o := range []pharox.TargetOutcome{
				{ProxyID: p.ID, Target: "shop.example", Kind: pharox.OutcomeBanned, StatusCode: 403, Reason: "blocked"},
				{ProxyID: p.ID, Target: "news.example", Kind: pharox.OutcomeFailure},
			} {
				if _, _, err := s.ApplyTargetOutcome(ctx, o, pharox.DefaultTargetPolicy()); err != nil {
					t.Fatal(err)
				}
			}
		}
		if name == "one" {
			for _, p := range ps {
				if err := s.DeleteProxy(ctx, p.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := s.DeletePool(ctx, pool.ID); err != nil {
			t.Fatal(err)
		}
	}
	// Only the consumer registry may remain, besides the replies the
	// administrative writes keep for a minute (see once in lib.lua).
	want := []string{"cbyid", "cids", "consumers"}
	got := slices.DeleteFunc(keysUnder(t, s), func(k string) bool { return strings.HasPrefix(k, "once:") })
	if !slices.Equal(got, want) {
		t.Errorf("keys left after deleting everything: %q, want %q", got, want)
	}
}

// TestEndedLeaseRetention checks that cleanup forgets ended leases older
// than the retention and keeps active ones.
func TestEndedLeaseRetention(t *testing.T) {
	s := newTestStore(t, WithEndedLeaseRetention(time.Millisecond))
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.0.0.1", Port: 1, Protocol: pharox.ProtocolHTTP}}); err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable}
	ended, err := s.AcquireLease(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseLease(ctx, ended.ID, nil); err != nil {
		t.Fatal(err)
	}
	active, err := s.AcquireLease(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if n, err := s.CleanupExpiredLeases(ctx); err != nil || n != 0 {
		t.Fatalf("CleanupExpiredLeases = %d, %v; want 0, nil", n, err)
	}
	if _, err := s.GetLease(ctx, ended.ID); !errors.Is(err, pharox.ErrLeaseNotFound) {
		t.Errorf("ended lease after retention: err = %v, want ErrLeaseNotFound", err)
	}
	if l, err := s.GetLease(ctx, active.ID); err != nil || l.Status != pharox.LeaseActive {
		t.Errorf("active lease after cleanup: %v, %v; want it active", l, err)
	}
}

// TestPasswordNotInErrors checks that a duplicate proxy's error names the
// proxy without its password.
func TestPasswordNotInErrors(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	p := pharox.Proxy{PoolID: pool.ID, Host: "10.0.0.1", Port: 1, Protocol: pharox.ProtocolHTTP,
		Credentials: &pharox.Credentials{User: "u", Password: "hunter2"}}
	_, err = s.AddProxies(ctx, []pharox.Proxy{p, p})
	if !errors.Is(err, pharox.ErrAlreadyExists) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("duplicate in batch: err = %v; want ErrAlreadyExists without the password", err)
	}
	if _, err := s.AddProxies(ctx, []pharox.Proxy{p}); err != nil {
		t.Fatal(err)
	}
	_, err = s.AddProxies(ctx, []pharox.Proxy{p})
	if !errors.Is(err, pharox.ErrAlreadyExists) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("duplicate of stored proxy: err = %v; want ErrAlreadyExists without the password", err)
	}
}

// TestPoolRecreatedUnderSameName checks that the store's cached pool id
// never leads an acquisition to a deleted pool's data.
func TestPoolRecreatedUnderSameName(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable}
	for round := range 2 {
		pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
		if err != nil {
			t.Fatal(err)
		}
		added, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.0.0.1", Port: 1 + round, Protocol: pharox.ProtocolHTTP}})
		if err != nil {
			t.Fatal(err)
		}
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if l.PoolID != pool.ID || l.ProxyID != added[0].ID {
			t.Fatalf("round %d: leased proxy %s of pool %s, want proxy %s of pool %s", round, l.ProxyID, l.PoolID, added[0].ID, pool.ID)
		}
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.DeletePool(ctx, pool.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AcquireLease(ctx, req); !errors.Is(err, pharox.ErrPoolNotFound) {
			t.Fatalf("round %d: acquire from deleted pool: err = %v, want ErrPoolNotFound", round, err)
		}
	}
}

// TestFilteredAcquireOnFullPool drains a pool whose filter index is too
// large to intersect at once, so that every strategy walks an empty free
// set, and checks that each reports ErrNoProxyAvailable.
func TestFilteredAcquireOnFullPool(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 150 // above SET_DIRECT in lib.lua
	ps := make([]pharox.Proxy, n)
	for i := range ps {
		ps[i] = pharox.Proxy{PoolID: pool.ID, Host: "10.0.0.1", Port: 1000 + i, Protocol: pharox.ProtocolHTTP,
			Country: "DE", Tags: []string{"t"}, MaxConcurrency: ptrutil.Ptr(1)}
	}
	if _, err := s.AddProxies(ctx, ps); err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable}
	for i := range n {
		if _, err := s.AcquireLease(ctx, req); err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
	}
	filters := []*pharox.Filters{
		{Country: "DE"},
		{Country: "DE", Tags: []string{"t"}},
		{Country: "DE", NoneOf: []pharox.Filters{{City: "x"}}},
		{NoneOf: []pharox.Filters{{City: "x"}}},
	}
	for _, st := range pharox.AllStrategies {
		for _, f := range filters {
			req.Strategy, req.Filters = st, f
			if _, err := s.AcquireLease(ctx, req); !errors.Is(err, pharox.ErrNoProxyAvailable) {
				t.Errorf("%s with %+v on a full pool: err = %v, want ErrNoProxyAvailable", st, *f, err)
			}
		}
	}
}

// TestEmptyTagMatchesNothing follows Filters.Match: no proxy carries the
// empty tag, unlike an empty country, which does not filter.
func TestEmptyTagMatchesNothing(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.0.0.1", Port: 1,
		Protocol: pharox.ProtocolHTTP, Tags: []string{"a"}}}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []*pharox.Filters{{Tags: []string{""}}, {Tags: []string{"a", ""}}} {
		if p, err := s.FindAvailableProxy(ctx, "p", f, pharox.FirstAvailable); !errors.Is(err, pharox.ErrNoProxyAvailable) {
			t.Errorf("tags %q: got %v, %v; want ErrNoProxyAvailable", f.Tags, p, err)
		}
	}
	if _, err := s.FindAvailableProxy(ctx, "p", &pharox.Filters{Tags: []string{"a"}}, pharox.FirstAvailable); err != nil {
		t.Errorf("tag a: %v", err)
	}
}

// TestStickyChoiceKeepsRoundRobinPosition checks that a lease served by a
// session binding does not move the round-robin position, as in the memory
// store: only the strategy's own choices do.
func TestStickyChoiceKeepsRoundRobinPosition(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	var in []pharox.Proxy
	for i := range 3 {
		in = append(in, pharox.Proxy{PoolID: pool.ID, Host: "10.0.0.1", Port: 1 + i, Protocol: pharox.ProtocolHTTP})
	}
	added, err := s.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(added, func(a, b *pharox.Proxy) int { return compareUUID(a.ID, b.ID) })
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	acquire := func(key string) *pharox.Proxy {
		t.Helper()
		req := pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.RoundRobin}
		if key != "" {
			req.SessionKey, req.SessionTTL = key, time.Minute
		}
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return l.Proxy
	}
	steps := []struct {
		key  string
		want int
	}{{"k", 0}, {"", 1}, {"k", 0}, {"", 2}}
	for i, st := range steps {
		if got := acquire(st.key); got.ID != added[st.want].ID {
			t.Fatalf("step %d (session %q): leased %s, want proxy #%d %s", i, st.key, got.ID, st.want, added[st.want].ID)
		}
	}
}

// TestNamesWithSeparators sends consumer, pool and session names holding
// the characters the lease record and its packed part use as separators
// through every path that returns a lease: alone and batched acquisition,
// sticky acquisition, renewal, lookup, listing and release.
func TestNamesWithSeparators(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	pool := "pool|1:2"
	proxies := batchPool(t, s, pool, 0)
	c, err := s.EnsureConsumer(ctx, "worker|3:4")
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, l *pharox.Lease, err error, sess string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if l.ConsumerID != c.ID || l.ConsumerName != c.Name || l.PoolName != pool || l.SessionKey != sess || l.ProxyID != proxies[0].ID {
			t.Errorf("%s: lease %+v; want consumer %q, pool %q, session %q", what, l, c.Name, pool, sess)
		}
	}
	req := pharox.AcquireRequest{PoolName: pool, ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Minute,
		Strategy: pharox.FirstAvailable}
	var leases []*pharox.Lease
	for i, r := range s.execAcquire(ctx, acquireKey{pool: pool, strategy: string(pharox.FirstAvailable)}, []pharox.AcquireRequest{req, req}) {
		check(fmt.Sprintf("batched acquisition %d", i), r.Val, r.Err, "")
		leases = append(leases, r.Val)
	}
	sticky := req
	sticky.SessionKey, sticky.SessionTTL = "sess|5:6", time.Minute
	l, err := s.AcquireLease(ctx, sticky)
	check("sticky acquisition", l, err, sticky.SessionKey)
	leases = append(leases, l)
	l, err = s.RenewLease(ctx, l.ID, time.Hour)
	check("renewal", l, err, sticky.SessionKey)
	l, err = s.GetLease(ctx, l.ID)
	check("lookup", l, err, sticky.SessionKey)
	listed, err := s.ListLeases(ctx, pharox.LeaseQuery{ConsumerID: c.ID})
	if err != nil || len(listed) != len(leases) {
		t.Fatalf("ListLeases = %d leases, %v; want %d", len(listed), err, len(leases))
	}
	for _, l := range listed {
		check("listing", l, nil, l.SessionKey)
	}
	for i, r := range s.execRelease(ctx, struct{}{}, plainReleases([]uuid.UUID{leases[0].ID, leases[1].ID})) {
		check(fmt.Sprintf("batched release %d", i), r.Val, r.Err, "")
	}
	l, err = s.ReleaseLease(ctx, leases[2].ID, nil)
	check("release", l, err, sticky.SessionKey)
}

// TestReclaimManyExpired lets more leases expire than one call can read
// (Lua's unpack is bounded by its stack, 8,000 values), then deletes their
// proxy, which reclaims them all in one script.
func TestReclaimManyExpired(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	const n = 8200
	proxies := batchPool(t, s, "p", n)
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	req := pharox.AcquireRequest{PoolName: "p", ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Second,
		Strategy: pharox.FirstAvailable}
	reqs := make([]pharox.AcquireRequest, 1025)
	for i := range reqs {
		reqs[i] = req
	}
	for range n / len(reqs) {
		for _, r := range s.execAcquire(ctx, acquireKey{pool: "p", strategy: string(pharox.FirstAvailable)}, reqs) {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
		}
	}
	time.Sleep(req.Duration + 100*time.Millisecond)
	if err := s.DeleteProxy(ctx, proxies[0].ID); err != nil {
		t.Fatalf("DeleteProxy after %d leases expired: %v", n, err)
	}
	st, err := s.GetPoolStats(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalLeases != 0 || st.LeasedProxies != 0 {
		t.Errorf("after the reclaim: %d leases, %d leased proxies; want 0, 0", st.TotalLeases, st.LeasedProxies)
	}
}
