package redis

import (
	"bufio"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	goredis "github.com/redis/go-redis/v9"
)

// scriptCalls returns how many Redis commands ran since the last CONFIG
// RESETSTAT, scripts' own calls included, leaving out the scripts
// themselves and the commands that set up or inspect connections.
func scriptCalls(t *testing.T, c *goredis.Client) int {
	t.Helper()
	info, err := c.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
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
		v, err := strconv.Atoi(calls)
		if err != nil {
			t.Fatalf("commandstats line %q", sc.Text())
		}
		n += v
	}
	return n
}

// TestTargetAcquisitionCost checks that what an acquisition with a target
// does inside Redis grows with the proxies cooling down for the target
// that it skips, never with the pool: on pools of 1,000 and 8,000
// proxies whose first 300 in every strategy's order cool down for the
// target, each strategy's acquisition (with the target, and without) runs
// the same number of Redis commands in both pools, and never leases a
// cooling proxy. It counts commands with INFO commandstats on a
// redis-server of its own.
func TestTargetAcquisitionCost(t *testing.T) {
	addr := privateRedis(t)
	c := clientOf(t, addr, func(*goredis.Options) {})
	ctx := t.Context()
	const target, skipped = "shop.example", 300
	type key struct {
		st   pharox.Strategy
		skip bool
	}
	calls := map[int]map[key]int{}
	for _, n := range []int{1000, 8000} {
		s, err := New(c, WithPrefix(fmt.Sprintf("{cost%d}:", n)), WithMaxBatch(1))
		if err != nil {
			t.Fatal(err)
		}
		_, ids := seedCostPool(t, s, n)
		byID := map[string]bool{}
		for _, id := range ids[:skipped] {
			if _, _, err := s.ApplyTargetOutcome(ctx, pharox.TargetOutcome{ProxyID: uuid.MustParse(id), Target: target, Kind: pharox.OutcomeBanned},
				pharox.DefaultTargetPolicy()); err != nil {
				t.Fatal(err)
			}
			byID[id] = true
		}
		cons, err := s.EnsureConsumer(ctx, "c")
		if err != nil {
			t.Fatal(err)
		}
		calls[n] = map[key]int{}
		for _, st := range []pharox.Strategy{pharox.FirstAvailable, pharox.LeastUsed, pharox.RoundRobin} {
			for _, skip := range []bool{true, false} {
				req := pharox.AcquireRequest{PoolName: "p", ConsumerID: cons.ID, ConsumerName: cons.Name,
					Duration: time.Minute, Strategy: st}
				if skip {
					req.Target = target
				}
				if err := c.ConfigResetStat(ctx).Err(); err != nil {
					t.Fatal(err)
				}
				l, err := s.AcquireLease(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				calls[n][key{st, skip}] = scriptCalls(t, c)
				if skip && byID[l.ProxyID.String()] {
					t.Errorf("pool of %d, %s: leased proxy %s, cooling down for %s", n, st, l.ProxyID, target)
				}
				if !skip && st != pharox.RoundRobin && l.ProxyID.String() != ids[0] {
					t.Errorf("pool of %d, %s without a target: leased %s, want the first proxy %s", n, st, l.ProxyID, ids[0])
				}
				if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for k, small := range calls[1000] {
		if large := calls[8000][k]; large != small {
			t.Errorf("%s, target %v: %d Redis commands in a pool of 1,000, %d in one of 8,000", k.st, k.skip, small, large)
		}
	}
	t.Logf("Redis commands per acquisition, pools of 1,000 and 8,000: %v", calls)
}

// TestRetriedTargetOutcomeAppliesOnce checks that a target outcome
// go-redis sent twice counts once: one failure leaves a streak of one, not
// two, and the reply is the state the first run made.
func TestRetriedTargetOutcomeAppliesOnce(t *testing.T) {
	var proxy *pharox.Proxy
	var got *pharox.TargetState
	o := pharox.TargetOutcome{Target: "shop.example", Kind: pharox.OutcomeFailure, StatusCode: 502, Reason: "bad gateway"}
	retried(t, func(t *testing.T) *retryingStore {
		rs := newRetryingStore(t)
		proxy, _ = retryPool(t, rs.Store)
		return rs
	}, func(rs *retryingStore) {
		o.ProxyID = proxy.ID
		var err error
		if got, _, err = rs.ApplyTargetOutcome(t.Context(), o, pharox.DefaultTargetPolicy()); err != nil {
			t.Fatalf("ApplyTargetOutcome sent twice: %v", err)
		}
	}, func(rs *retryingStore) {
		sts, err := rs.ListTargetStates(t.Context(), proxy.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(sts) != 1 || sts[0].FailureStreak != 1 || got.FailureStreak != 1 {
			t.Errorf("one failure sent twice: stored %+v, returned %+v; want a streak of 1", sts, got)
		}
	})
}

// seedCostPool stores pool "p" with n unleased proxies (n a multiple of
// 1,000) and returns it with their ids, sorted: the order every strategy
// walks unchecked, unleased proxies in.
func seedCostPool(t *testing.T, s *Store, n int) (*pharox.Pool, []string) {
	t.Helper()
	ctx := t.Context()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for lo := 0; lo < n; lo += 1000 {
		ps := make([]pharox.Proxy, 1000)
		for i := range ps {
			j := lo + i
			ps[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.%d.%d.%d", j>>16, j>>8&255, j&255), Port: 8080,
				Protocol: pharox.ProtocolHTTP}
		}
		added, err := s.AddProxies(ctx, ps)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range added {
			ids = append(ids, p.ID.String())
		}
	}
	slices.Sort(ids)
	return pool, ids
}
