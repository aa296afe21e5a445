package redis

import (
	"bufio"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
	goredis "github.com/redis/go-redis/v9"
)

// commandCounts returns how many times each Redis command ran since the
// last CONFIG RESETSTAT, scripts' own calls included, leaving out what
// scriptCalls leaves out; it resets the counts.
func commandCounts(t *testing.T, c *goredis.Client) map[string]int {
	t.Helper()
	info, err := c.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		name, rest, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "cmdstat_"), ":calls=")
		if !ok {
			continue
		}
		switch strings.SplitN(name, "|", 2)[0] {
		case "evalsha", "eval", "script", "info", "config", "hello", "client", "ping", "select":
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		n, err := strconv.Atoi(calls)
		if err != nil {
			t.Fatalf("commandstats line %q", sc.Text())
		}
		out[name] = n
	}
	if err := c.ConfigResetStat(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// diffCounts returns b - a per command, leaving out zeros.
func diffCounts(a, b map[string]int) map[string]int {
	d := map[string]int{}
	for k := range maps.Keys(b) {
		if n := b[k] - a[k]; n != 0 {
			d[k] = n
		}
	}
	for k := range maps.Keys(a) {
		if _, ok := b[k]; !ok {
			d[k] = -a[k]
		}
	}
	return d
}

// TestQuotaFreeAcquisitionCost checks what quotas cost acquisitions and
// releases inside Redis, counting commands with INFO commandstats on a
// redis-server of its own: quotas of other consumers, pools and proxies
// change nothing for a consumer and pool without quotas (single and
// batched acquisitions and releases run the very same commands), where
// the one command quotas add is the HMGET that finds none; a consumer
// with a concurrency cap and a request rate adds one ZCOUNT, one ZADD
// and one HSET to a lone acquisition, and one ZREM to its release.
func TestQuotaFreeAcquisitionCost(t *testing.T) {
	addr := privateRedis(t)
	c := clientOf(t, addr, func(*goredis.Options) {})
	ctx := t.Context()
	s, err := New(c, WithPrefix("{cost}:"), WithMaxBatch(1))
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := testfactory.PoolWithProxies(ctx, t, s, nil, 200, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(2)})
	other, others := testfactory.PoolWithProxies(ctx, t, s, nil, 20, nil)
	a, b := testfactory.Consumer(ctx, t, s, nil), testfactory.Consumer(ctx, t, s, nil)
	req := pharox.AcquireRequest{PoolName: pool.Name, ConsumerID: a.ID, ConsumerName: a.Name, Duration: time.Minute,
		Strategy: pharox.FirstAvailable}
	// run measures a lone acquisition and release, then a batch of 8 of
	// each, of consumer a in pool.
	run := func() []map[string]int {
		commandCounts(t, c)
		l, err := s.AcquireLease(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		out := []map[string]int{commandCounts(t, c)}
		if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
			t.Fatal(err)
		}
		out = append(out, commandCounts(t, c))
		var ids []uuid.UUID
		for _, r := range s.execAcquire(ctx, acquireKey{pool: req.PoolName, strategy: string(req.Strategy)}, slices.Repeat([]pharox.AcquireRequest{req}, 8)) {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
			ids = append(ids, r.Val.ID)
		}
		out = append(out, commandCounts(t, c))
		for _, r := range s.execRelease(ctx, struct{}{}, plainReleases(ids)) {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
		}
		return append(out, commandCounts(t, c))
	}
	names := []string{"acquisition", "release", "batch of 8 acquisitions", "batch of 8 releases"}
	// A first round fills the connection pool and the script cache.
	run()
	none := run()
	t.Logf("commands without quotas: %v", none)
	if none[0]["hmget"] != 2 {
		t.Errorf("a lone acquisition without quotas ran %d HMGETs, want 2 (the proxy's fields, the quota probe)", none[0]["hmget"])
	}
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: b.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 3, RequestsPerMinute: 5}})
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaPool, SubjectID: other.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 3}})
	for _, p := range others {
		setQuota(t, s, pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: p.ID, QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1}})
	}
	elsewhere := run()
	for i := range names {
		if d := diffCounts(none[i], elsewhere[i]); len(d) > 0 {
			t.Errorf("%s: quotas of other subjects changed its commands by %v", names[i], d)
		}
	}
	setQuota(t, s, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: a.ID, QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 100, RequestsPerMinute: 100000}})
	capped := run()
	for i, want := range []map[string]int{{"zcount": 1, "zadd": 1, "hset": 1}, {"zrem": 1}} {
		if d := diffCounts(none[i], capped[i]); !maps.Equal(d, want) {
			t.Errorf("%s: a cap and a request rate added %v, want %v", names[i], d, want)
		}
	}
	t.Logf("batched, a cap and a request rate add %v to acquisitions and %v to releases",
		diffCounts(none[2], capped[2]), diffCounts(none[3], capped[3]))
}

// TestExhaustedAcquisitionCost checks that skipping proxies whose traffic
// allowance is exhausted costs per proxy skipped, never per proxy in the
// pool: on pools of 1,000 and 8,000 proxies whose first 300 in every
// strategy's order have used up their allowance, each strategy's
// acquisition runs the same number of Redis commands in both pools, and
// never leases an exhausted proxy. It counts commands with INFO
// commandstats on a redis-server of its own.
func TestExhaustedAcquisitionCost(t *testing.T) {
	addr := privateRedis(t)
	c := clientOf(t, addr, func(*goredis.Options) {})
	ctx := t.Context()
	const skipped = 300
	calls := map[int]map[pharox.Strategy]int{}
	for _, n := range []int{1000, 8000} {
		s, err := New(c, WithPrefix(fmt.Sprintf("{xcost%d}:", n)), WithMaxBatch(1))
		if err != nil {
			t.Fatal(err)
		}
		pool, ids := seedCostPool(t, s, n)
		// The first proxies in id order carried a byte this hour (a
		// bucket written here as a release would), so a quota of a byte a
		// day finds them exhausted.
		cons, err := s.EnsureConsumer(ctx, "c")
		if err != nil {
			t.Fatal(err)
		}
		now, err := s.serverNow(ctx)
		if err != nil {
			t.Fatal(err)
		}
		bucket := fmt.Sprintf("%susage:%d", s.prefix, now.Truncate(time.Hour).Unix())
		exhausted := map[string]bool{}
		for _, id := range ids[:skipped] {
			if err := c.HSet(ctx, bucket, cons.ID.String()+"|"+id+"|"+pool.ID.String()+"|", "1 1 1 0").Err(); err != nil {
				t.Fatal(err)
			}
			exhausted[id] = true
		}
		for _, id := range ids[:skipped] {
			setQuota(t, s, pharox.Quota{Subject: pharox.QuotaProxy, SubjectID: uuid.MustParse(id), QuotaLimits: pharox.QuotaLimits{BytesPerDay: 1}})
		}
		calls[n] = map[pharox.Strategy]int{}
		for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed, pharox.RoundRobin} {
			req := pharox.AcquireRequest{PoolName: "p", ConsumerID: cons.ID, ConsumerName: cons.Name, Duration: time.Minute, Strategy: st}
			commandCounts(t, c)
			l, err := s.AcquireLease(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			calls[n][st] = scriptCalls(t, c)
			if exhausted[l.ProxyID.String()] {
				t.Errorf("pool of %d, %s: leased proxy %s, whose allowance is exhausted", n, st, l.ProxyID)
			}
			if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	for st, small := range calls[1000] {
		if large := calls[8000][st]; large != small {
			t.Errorf("%s: %d Redis commands in a pool of 1,000, %d in one of 8,000", st, small, large)
		}
	}
	t.Logf("Redis commands per acquisition skipping %d exhausted proxies, pools of 1,000 and 8,000: %v", skipped, calls)
}
