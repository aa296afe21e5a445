package mysql

import (
	"context"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

// TestStickyBanHoldsAcrossLockWait is the cross-process target gap
// storagetest's multi-process audit found (KnownTargetGap, issue #23): a
// sticky acquisition for a target, called after a ban of its bound proxy
// for that target returned, waits for the proxy's row lock (another
// transaction holds it) until the cool-down is over. It must not end with a
// lease that starts inside the cool-down: either it finds no proxy, or its
// lease starts after the cool-down's end. Before the fix the lease's
// AcquiredAt was the clock of the locking statement, read before the lock
// wait, while the cool-down was checked by a later statement, after it.
func TestStickyBanHoldsAcrossLockWait(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "sticky-ban"})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.2.0.1", Port: 3128, Protocol: pharox.ProtocolHTTP}})
	if err != nil {
		t.Fatal(err)
	}
	proxy := ps[0]
	c, err := s.EnsureConsumer(ctx, "sticky-ban")
	if err != nil {
		t.Fatal(err)
	}
	const target = "example.com"
	req := pharox.AcquireRequest{PoolName: pool.Name, ConsumerID: c.ID, ConsumerName: c.Name, Duration: time.Minute,
		Strategy: pharox.FirstAvailable, SessionKey: "k", SessionTTL: time.Minute, Target: target}
	l, err := s.AcquireLease(ctx, req) // binds "k" to the proxy
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
		t.Fatal(err)
	}

	policy := pharox.DefaultTargetPolicy()
	policy.BaseCooldown, policy.MaxCooldown = 300*time.Millisecond, 300*time.Millisecond
	st, _, err := s.ApplyTargetOutcome(ctx, pharox.TargetOutcome{ProxyID: proxy.ID, Target: target, Kind: pharox.OutcomeBanned}, policy)
	if err != nil {
		t.Fatal(err)
	}
	// Another transaction (an acquisition of another process, say) holds
	// the proxy's row lock until the cool-down is over.
	conn, err := s.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "START TRANSACTION"); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := conn.QueryRowContext(ctx, s.q(`SELECT id FROM {p}proxies WHERE id = ? FOR UPDATE`), idArg(proxy.ID)).Scan(&got); err != nil {
		t.Fatal(err)
	}
	type result struct {
		l   *pharox.Lease
		err error
	}
	done := make(chan result, 1)
	called := time.Now()
	go func() {
		l, err := s.AcquireLease(ctx, req)
		done <- result{l, err}
	}()
	// Let the acquisition reach the lock, then hold it past the cool-down.
	time.Sleep(max(time.Until(*st.CoolingUntil), 0) + 100*time.Millisecond)
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Logf("the acquisition found no proxy: %v", r.err)
		return
	}
	if r.l.AcquiredAt.Before(*st.CoolingUntil) {
		t.Errorf("a sticky acquisition called at %v, after the ban returned, leased the proxy for %q at %v, inside its cool-down from %v until %v",
			called, target, r.l.AcquiredAt, *st.BannedAt, *st.CoolingUntil)
	}
}
