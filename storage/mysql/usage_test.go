package mysql

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

// TestQuotaSetByAnotherProcessApplies checks the quota probe: a store
// whose caches know the pool and the consumer, and whose last acquisition
// found no quota, still applies a quota another store (another process)
// sets afterwards, on its very next acquisition, sticky or not, even with
// a single acquisition attempt (the try the probe ends is not one); and
// one that last found a quota stops applying it once the other store
// deleted it.
func TestQuotaSetByAnotherProcessApplies(t *testing.T) {
	dsn := testDSN(t)
	prefix := uniquePrefix()
	dropTablesOnCleanup(t, prefix)
	ctx := context.Background()
	open := func(opts ...Option) *Store {
		s, err := Open(ctx, dsn, append([]Option{WithTablePrefix(prefix), WithMaxConns(2)}, opts...)...)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a, b := open(WithAcquireAttempts(1)), open()
	pool, err := a.CreatePool(ctx, pharox.Pool{Name: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	ps := make([]pharox.Proxy, 4)
	for i := range ps {
		ps[i] = pharox.Proxy{PoolID: pool.ID, Host: "10.1.0.1", Port: 1000 + i, Protocol: pharox.ProtocolHTTP}
	}
	if _, err := a.AddProxies(ctx, ps); err != nil {
		t.Fatal(err)
	}
	c, err := a.EnsureConsumer(ctx, "prober")
	if err != nil {
		t.Fatal(err)
	}
	for _, sticky := range []bool{false, true} {
		req := pharox.AcquireRequest{PoolName: "probe", ConsumerID: c.ID, ConsumerName: c.Name,
			Duration: time.Minute, Strategy: pharox.FirstAvailable}
		if sticky {
			req.SessionKey, req.SessionTTL = "probe-session", time.Minute
		}
		release := func(l *pharox.Lease) {
			t.Helper()
			if _, err := a.ReleaseLease(ctx, l.ID, nil); err != nil {
				t.Fatalf("ReleaseLease: %v", err)
			}
		}
		// a learns the pool and the consumer, and that they have no quota.
		first, err := a.AcquireLease(ctx, req)
		if err != nil {
			t.Fatalf("sticky %v: AcquireLease before any quota: %v", sticky, err)
		}
		if a.quotaHinted(quotaPair{c.ID, pool.ID}) {
			t.Fatalf("sticky %v: the pair is hinted as having a quota before any was set", sticky)
		}
		if _, err := b.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: c.ID,
			QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 1}}); err != nil {
			t.Fatalf("SetQuota through the other store: %v", err)
		}
		_, err = a.AcquireLease(ctx, req)
		var qe *pharox.QuotaError
		if !errors.As(err, &qe) || qe.Limit != pharox.LimitMaxConcurrentLeases {
			t.Fatalf("sticky %v: second AcquireLease under a cap of 1 set by another store: %v, want a max_concurrent_leases QuotaError", sticky, err)
		}
		if !a.quotaHinted(quotaPair{c.ID, pool.ID}) {
			t.Errorf("sticky %v: the pair is not hinted after an acquisition found its quota", sticky)
		}
		release(first)
		l, err := a.AcquireLease(ctx, req)
		if err != nil {
			t.Fatalf("sticky %v: AcquireLease after the release: %v", sticky, err)
		}
		if err := b.DeleteQuota(ctx, pharox.QuotaConsumer, c.ID); err != nil {
			t.Fatalf("DeleteQuota through the other store: %v", err)
		}
		second, err := a.AcquireLease(ctx, req)
		if err != nil {
			t.Fatalf("sticky %v: AcquireLease after the other store deleted the cap: %v", sticky, err)
		}
		if a.quotaHinted(quotaPair{c.ID, pool.ID}) {
			t.Errorf("sticky %v: the pair is still hinted after an acquisition found no quota", sticky)
		}
		release(l)
		release(second)
	}
}

// TestQuotaStatementsUseIndexes checks with EXPLAIN that the statements an
// acquisition and a release run for quotas read what they should: the
// quota rows by primary key (a locking read that scanned the table would
// lock, or wait for, every quota), the active leases of a consumer or a
// pool by a range of their index, and the probe by primary key.
func TestQuotaStatementsUseIndexes(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	// Enough rows that a scan would look worth it to no optimizer.
	if _, err := s.db.ExecContext(ctx, s.q(`INSERT INTO {p}quotas (subject, subject_id, max_concurrent_leases, day, month, updated_at)
		SELECT 'consumer', UUID(), 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)
		FROM information_schema.columns LIMIT 300`)); err != nil {
		t.Fatal(err)
	}
	leaseID := "00000000-0000-0000-0000-000000000002"
	if _, err := s.db.ExecContext(ctx, s.q(`INSERT INTO {p}leases (id, proxy_id, pool_id, pool_name, consumer_id, status, acquired_at, expires_at)
		VALUES (?, UUID(), UUID(), 'p', UUID(), 'active', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))`), leaseID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, s.q(`ANALYZE TABLE {p}quotas, {p}leases`)); err != nil {
		t.Fatal(err)
	}
	id := "00000000-0000-0000-0000-000000000001"
	for _, tc := range []struct {
		name, query string
		args        []any
		table, key  string
	}{
		{"quota lock", `SELECT ` + quotaCols + ` FROM {p}quotas FORCE INDEX (PRIMARY)
			WHERE subject = 'consumer' AND subject_id = ? OR subject = 'pool' AND subject_id = ? ORDER BY subject FOR UPDATE`,
			[]any{id, id}, "quotas", "PRIMARY"},
		{"consumer count", `SELECT count(*) FROM {p}leases FORCE INDEX ({p}leases_consumer_active)
			WHERE consumer_id = ? AND status = 'active' AND expires_at > UTC_TIMESTAMP(6)`,
			[]any{id}, "leases", s.cfg.prefix + "leases_consumer_active"},
		{"pool count", `SELECT count(*) FROM {p}leases FORCE INDEX ({p}leases_pool)
			WHERE pool_id = ? AND status = 'active' AND expires_at > UTC_TIMESTAMP(6)`,
			[]any{id}, "leases", s.cfg.prefix + "leases_pool"},
		{"probe", `SELECT ` + quotaProbeSQL, []any{id, id}, "quotas", "PRIMARY"},
		{"release probe", `SELECT ` + leaseCols + `, ` + leaseQuotaProbeSQL + ` FROM {p}leases l WHERE id = ? FOR UPDATE`,
			[]any{leaseID}, "q", "PRIMARY"},
	} {
		rows := explainRows(t, s.db, "EXPLAIN "+s.q(tc.query), tc.args...)
		found := false
		for _, r := range rows {
			if !strings.HasSuffix(r["table"], tc.table) {
				continue
			}
			found = true
			if r["key"] != tc.key || r["type"] == "ALL" || r["type"] == "index" {
				t.Errorf("%s: reads %s with key %q, access %q; want %s by a range or lookup:\n%v", tc.name, tc.table, r["key"], r["type"], tc.key, rows)
			}
		}
		if !found {
			t.Errorf("%s: EXPLAIN shows no read of %s:\n%v", tc.name, tc.table, rows)
		}
	}
}
