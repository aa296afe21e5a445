package server_test

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/memory"
)

// usageDownStore is a memory store whose usage and quota calls fail as a
// store that went away fails: the connection is refused.
type usageDownStore struct{ *memory.Store }

var errRefused = fmt.Errorf("dial tcp 10.9.9.9:5432: %w", syscall.ECONNREFUSED)

func (usageDownStore) SetQuota(context.Context, pharox.Quota) (*pharox.Quota, error) {
	return nil, errRefused
}

func (usageDownStore) GetQuota(context.Context, pharox.QuotaSubject, uuid.UUID) (*pharox.Quota, error) {
	return nil, errRefused
}
func (usageDownStore) ListQuotas(context.Context) ([]*pharox.Quota, error) { return nil, errRefused }
func (usageDownStore) DeleteQuota(context.Context, pharox.QuotaSubject, uuid.UUID) error {
	return errRefused
}

func (usageDownStore) QueryUsage(context.Context, pharox.UsageQuery) ([]pharox.UsageRow, error) {
	return nil, errRefused
}

func (s usageDownStore) ReleaseLease(ctx context.Context, id uuid.UUID, u *pharox.Usage) (*pharox.Lease, error) {
	if u != nil {
		return nil, errRefused
	}
	return s.Store.ReleaseLease(ctx, id, nil)
}

// TestUsageOutageIs503 checks that a store that cannot be reached answers
// the usage and quota routes, and a release with usage, 503 with
// Retry-After, never 500.
func TestUsageOutageIs503(t *testing.T) {
	store := usageDownStore{testfactory.Memory(t)}
	t.Cleanup(func() { _ = store.Close() })
	e := servertest.NewEnv(t, store, nil)
	pool := e.CreatePool("main")
	e.AddProxy(pool, api.CreateProxyRequest{Host: "10.70.0.1", Port: 80})
	l := e.Acquire(api.AcquireRequest{PoolName: "main", ConsumerName: "c"})
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/v1/usage", nil},
		{"GET", "/v1/quotas/", nil},
		{"GET", "/v1/quotas/consumer/c", nil},
		{"PUT", "/v1/quotas/consumer/c", api.QuotaLimits{MaxConcurrentLeases: 1}},
		{"DELETE", "/v1/quotas/pool/main", nil},
		{"POST", "/v1/leases/" + l.ID.String() + "/release", api.ReleaseRequest{Usage: &pharox.Usage{Requests: 1}}},
	} {
		r := e.Admin(c.method, c.path, c.body)
		if r.Status != 503 || r.Header.Get("Retry-After") == "" {
			t.Errorf("%s %s with the store down: %d (Retry-After %q) %s, want 503 with Retry-After", c.method, c.path, r.Status,
				r.Header.Get("Retry-After"), r.Body)
		}
	}
}

// purgeCounter is a memory store that records its usage purges.
type purgeCounter struct {
	*memory.Store
	mu      sync.Mutex
	befores []time.Time
}

func (p *purgeCounter) PurgeUsage(ctx context.Context, before time.Time) (int, error) {
	p.mu.Lock()
	p.befores = append(p.befores, before)
	p.mu.Unlock()
	return p.Store.PurgeUsage(ctx, before)
}

func (p *purgeCounter) purges() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.befores...)
}

// TestReapPurgesUsageHourly checks that the reaper purges usage buckets
// older than the retention once an hour, not at every round, and never
// with a negative retention.
func TestReapPurgesUsageHourly(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		retention time.Duration
		want      time.Duration // how far back the purge cuts; 0: no purge
	}{
		{0, server.DefaultUsageRetention},
		{48 * time.Hour, 48 * time.Hour},
		{-1, 0},
	} {
		store := &purgeCounter{Store: testfactory.Memory(t)}
		t.Cleanup(func() { _ = store.Close() })
		e := servertest.NewEnv(t, store, func(o *server.Options) { o.UsageRetention = c.retention })
		before := time.Now()
		for range 3 {
			e.Server.Reap(ctx)
		}
		got := store.purges()
		if c.want == 0 {
			if len(got) != 0 {
				t.Errorf("retention %v: purged %d times, want never", c.retention, len(got))
			}
			continue
		}
		if len(got) != 1 {
			t.Fatalf("retention %v: %d purges in three rounds, want one (hourly)", c.retention, len(got))
		}
		if cut := before.Add(-c.want); got[0].Before(cut.Add(-time.Second)) || got[0].After(time.Now().Add(-c.want)) {
			t.Errorf("retention %v: purged before %v, want about %v", c.retention, got[0], cut)
		}
	}
}
