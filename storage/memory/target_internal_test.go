package memory

import (
	"context"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

// The per-target indexes hold only what the entries say: a cool-down that
// a success cleared, an evicted or purged entry and a deleted proxy leave
// nothing behind, so they never grow with traffic.
func TestTargetIndexesStayBounded(t *testing.T) {
	ctx := context.Background()
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := s.AddProxies(ctx, []pharox.Proxy{
		{PoolID: pool.ID, Host: "10.0.0.1", Port: 1, Protocol: pharox.ProtocolHTTP},
		{PoolID: pool.ID, Host: "10.0.0.2", Port: 1, Protocol: pharox.ProtocolHTTP},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := pharox.DefaultTargetPolicy()
	p.MaxTargetsPerProxy = 2
	t0 := time.Now().Add(-time.Hour)
	apply := func(i int, target string, kind pharox.OutcomeKind, at time.Time) {
		t.Helper()
		if _, _, err := s.ApplyTargetOutcome(ctx, pharox.TargetOutcome{ProxyID: ps[i].ID, Target: target, Kind: kind, At: at}, p); err != nil {
			t.Fatal(err)
		}
	}
	sizes := func() (targets, cooling, targeted int) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.cooling {
			cooling += len(c)
		}
		return len(s.cooling), cooling, len(s.targeted)
	}
	apply(0, "a.example", pharox.OutcomeBanned, t0)
	apply(0, "b.example", pharox.OutcomeBanned, t0.Add(time.Second))
	apply(1, "a.example", pharox.OutcomeBanned, t0)
	if n, c, d := sizes(); n != 2 || c != 3 || d != 2 {
		t.Fatalf("after three bans: %d targets, %d cooling entries, %d proxies with entries", n, c, d)
	}
	// A success after the cool-down clears the entry's cooling index.
	apply(1, "a.example", pharox.OutcomeSuccess, t0.Add(p.BaseCooldown+time.Second))
	if _, c, _ := sizes(); c != 2 {
		t.Fatalf("after a success past the cool-down: %d cooling entries, want 2", c)
	}
	// A third target evicts the longest-idle entry of proxy 0 (a.example)
	// and its cooling index.
	apply(0, "c.example", pharox.OutcomeFailure, t0.Add(2*time.Second))
	if n, c, _ := sizes(); n != 1 || c != 1 {
		t.Fatalf("after an eviction: %d targets, %d cooling entries, want 1 and 1", n, c)
	}
	// Deleting proxy 1 and purging everything leaves nothing.
	if err := s.DeleteProxy(ctx, ps[1].ID); err != nil {
		t.Fatal(err)
	}
	if _, _, d := sizes(); d != 1 {
		t.Fatalf("after deleting a proxy: %d proxies with entries, want 1", d)
	}
	if n, err := s.PurgeTargetStates(ctx, time.Now().Add(48*time.Hour)); err != nil || n != 2 {
		t.Fatalf("PurgeTargetStates = %d, %v; want 2", n, err)
	}
	if n, c, d := sizes(); n != 0 || c != 0 || d != 0 {
		t.Fatalf("after purging everything: %d targets, %d cooling entries, %d proxies with entries", n, c, d)
	}
}
