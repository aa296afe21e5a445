package redis

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"github.com/pharox/pharox/storage/storagetest"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/redistest"
	"github.com/pharox/pharox/internal/testfactory"
	goredis "github.com/redis/go-redis/v9"
)

// benchPoolSize is the number of proxies in the benchmark pool.
const benchPoolSize = 1000

// trivialScript is the baseline: the cheapest script Redis can run, so its
// rate is the server's ceiling for script calls on this machine.
const trivialScript = "return 1"

// evalshaCeiling runs redis-benchmark for EVALSHA of trivialScript with the
// given number of clients and returns its requests per second, or an error
// when redis-benchmark is unavailable.
func evalshaCeiling(ctx context.Context, c *goredis.Client, clients, requests int) (float64, error) {
	path, err := exec.LookPath("redis-benchmark")
	if err != nil {
		return 0, errors.New("redis-benchmark not installed (Debian: redis-tools)")
	}
	sha, err := c.ScriptLoad(ctx, trivialScript).Result()
	if err != nil {
		return 0, err
	}
	opt := c.Options()
	host, port, err := net.SplitHostPort(opt.Addr)
	if err != nil {
		return 0, err
	}
	args := []string{"-h", host, "-p", port, "-n", strconv.Itoa(requests), "-c", strconv.Itoa(clients), "--csv"}
	if opt.Password != "" {
		args = append(args, "-a", opt.Password)
	}
	if opt.DB != 0 {
		args = append(args, "--dbnum", strconv.Itoa(opt.DB))
	}
	args = append(args, "EVALSHA", sha, "0")
	out, err := exec.CommandContext(ctx, path, args...).Output()
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark: %w", err)
	}
	recs, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil || len(recs) < 2 || len(recs[1]) < 2 {
		return 0, fmt.Errorf("redis-benchmark: unexpected output %q", out)
	}
	return strconv.ParseFloat(recs[1][1], 64)
}

// BenchmarkAcquireRelease runs storagetest.Benchmark (acquire+release
// pairs per second and CPU per pair) on a 1,000-proxy pool
// (max_concurrency 2, first_available) at 1, 8, 32 and 64 concurrent
// workers, and once at 32 workers with a country filter matching a
// quarter of the pool (country/workers=32). Beside the store, each round
// runs as many pairs through a store with batching off (WithMaxBatch(1))
// on the same pool, reported as unbatched-pairs/s, and redis-benchmark's
// rate for a trivial EVALSHA with as many clients (evalsha/s, the median
// of the rounds; not in -short runs or without redis-benchmark). x-evalsha
// divides operations/s (two per pair: an acquisition and a release, each
// one script call when served alone) by it, comparing script operations
// with script calls.
// Run it with a fixed count, e.g. -benchtime=20000x, so that the baselines
// run once per round rather than once per calibration step.
func BenchmarkAcquireRelease(b *testing.B) {
	benchAcquireRelease(b, nil, 1, 8, 32, 64)
	// One filtered case: a country matching a quarter of the pool.
	b.Run("country", func(b *testing.B) { benchAcquireRelease(b, &pharox.Filters{Country: "DE"}, 32) })
}

func benchAcquireRelease(b *testing.B, filters *pharox.Filters, workers ...int) {
	top := slices.Max(workers)
	client := redistest.Client(b, func(o *goredis.Options) {
		o.PoolSize = 2 * top
		o.MinIdleConns = top
	})
	prefix := testPrefix()
	b.Cleanup(func() { redistest.DeletePrefix(b, client, prefix) })
	s, err := New(client, WithPrefix(prefix))
	if err != nil {
		b.Fatal(err)
	}
	if err := s.LoadScripts(context.Background()); err != nil {
		b.Fatal(err)
	}
	unbatched, err := New(client, WithPrefix(prefix), WithMaxBatch(1))
	if err != nil {
		b.Fatal(err)
	}
	opts := []storagetest.BenchOption{
		storagetest.BenchWorkers(workers...),
		storagetest.BenchProxies(benchPoolSize, 2),
		storagetest.BenchWithBaseline(storagetest.BenchBaseline{Name: "unbatched", Store: unbatched}),
		storagetest.BenchWithBaseline(storagetest.BenchBaseline{Name: "evalsha", OpsPerPair: 2,
			Rate: func(ctx context.Context, workers int) (float64, error) {
				if testing.Short() {
					return 0, errors.New("not measured in -short runs")
				}
				return evalshaCeiling(ctx, client, workers, baselineRequests)
			}}),
	}
	if filters != nil {
		opts = append(opts, storagetest.BenchFilters(filters))
	}
	storagetest.Benchmark(b, func(*testing.B) pharox.Storage { return s }, opts...)
}

// BenchmarkServerCost measures what a batch of n acquire+release pairs
// costs Redis itself, without the network and the client: each iteration
// runs one acquire_many.lua and one release_many.lua call of n items (one
// acquire.lua and one release.lua for n=1) and reads EVALSHA's time from
// INFO commandstats, then does the same for a consumer with a
// max_concurrent_leases quota far above what it holds (which counts its
// leases in every acquisition: the order alternates), then for two calls
// of a trivial script (the baseline). It reports server-us/pair,
// capped-server-us/pair, cap/plain (their quotient, what a consumer cap
// costs Redis), trivial-us/call and x-trivial (how many trivial script
// calls a plain pair costs). It runs on a redis-server of its own when
// redis-server is installed, else on PHAROX_TEST_REDIS_URL's, where it
// needs the server to itself (another client's EVALSHA would count).
// Run under callgrind (valgrind --tool=callgrind redis-server --port N
// --save "" --appendonly no, with PHAROX_TEST_REDIS_URL pointing there
// and redis-server not on PATH) it gives instruction counts, which do not
// depend on the machine's load.
func BenchmarkServerCost(b *testing.B) {
	for _, n := range []int{1, 12, 64} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) { benchServerCost(b, n) })
	}
}

func benchServerCost(b *testing.B, n int) {
	var s *Store
	if _, err := exec.LookPath("redis-server"); err == nil {
		c := clientOf(b, privateRedis(b), func(*goredis.Options) {})
		var err error
		if s, err = New(c, WithPrefix("{cost}:")); err != nil {
			b.Fatal(err)
		}
	} else {
		s = newTestStore(b)
	}
	client := s.rdb
	ctx := context.Background()
	pool, _ := testfactory.PoolWithProxies(ctx, b, s, nil, benchPoolSize, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(2)})
	req := testfactory.AcquireRequest(&testfactory.LeaseOpts{PoolName: &pool.Name, Consumer: testfactory.Consumer(ctx, b, s, nil)})
	capped := req
	capped.ConsumerID = testfactory.Consumer(ctx, b, s, nil).ID
	if _, err := s.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: capped.ConsumerID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 100 * benchPoolSize}}); err != nil {
		b.Fatal(err)
	}
	trivial := goredis.NewScript(trivialScript)
	if err := trivial.Load(ctx, client).Err(); err != nil {
		b.Fatal(err)
	}
	key := acquireKey{pool: req.PoolName, strategy: string(req.Strategy)}
	ids := make([]uuid.UUID, n)
	// pair runs n pairs of r's consumer and returns Redis' time for them.
	pair := func(r pharox.AcquireRequest) float64 {
		u0 := evalshaUsec(b, client)
		for i, r := range s.execAcquire(ctx, key, slices.Repeat([]pharox.AcquireRequest{r}, n)) {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
			ids[i] = r.Val.ID
		}
		for _, r := range s.execRelease(ctx, struct{}{}, plainReleases(ids)) {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
		return evalshaUsec(b, client) - u0
	}
	pair(req)
	pair(capped)
	var pairUsec, cappedUsec, trivialUsec float64
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			pairUsec += pair(req)
			cappedUsec += pair(capped)
		} else {
			cappedUsec += pair(capped)
			pairUsec += pair(req)
		}
		u1 := evalshaUsec(b, client)
		for range 2 {
			if err := trivial.EvalSha(ctx, client, nil).Err(); err != nil {
				b.Fatal(err)
			}
		}
		trivialUsec += evalshaUsec(b, client) - u1
	}
	perPair := pairUsec / float64(b.N*n)
	perTrivial := trivialUsec / float64(2*b.N)
	b.ReportMetric(perPair, "server-us/pair")
	b.ReportMetric(cappedUsec/float64(b.N*n), "capped-server-us/pair")
	b.ReportMetric(cappedUsec/pairUsec, "cap/plain")
	b.ReportMetric(perTrivial, "trivial-us/call")
	if perTrivial > 0 {
		b.ReportMetric(perPair/perTrivial, "x-trivial")
	}
}

// evalshaUsec returns the microseconds Redis has spent in EVALSHA, from
// INFO commandstats.
func evalshaUsec(b testing.TB, c goredis.UniversalClient) float64 {
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(info) {
		if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:"); ok {
			for field := range strings.SplitSeq(strings.TrimSpace(rest), ",") {
				if v, ok := strings.CutPrefix(field, "usec="); ok {
					usec, err := strconv.ParseFloat(v, 64)
					if err != nil {
						b.Fatalf("INFO commandstats: %q", line)
					}
					return usec
				}
			}
		}
	}
	return 0 // no EVALSHA yet
}

// baselineRequests is the size of one redis-benchmark run.
const baselineRequests = 20000

// BenchmarkTargets compares acquire+release pairs for a target with half
// the pool cooling down for it against pairs without a target (see
// storagetest.BenchmarkTargets).
func BenchmarkTargets(b *testing.B) {
	storagetest.BenchmarkTargets(b, func(b *testing.B) pharox.Storage { return newTestStore(b) })
}
