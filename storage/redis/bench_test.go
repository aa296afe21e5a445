package redis

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/storagetest"
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

// BenchmarkAcquireRelease measures acquire+release pairs per second on a
// 1,000-proxy pool (max_concurrency 2, first_available) at 1, 8, 32 and 64
// concurrent workers, and their ratio to redis-benchmark's rate for a
// trivial EVALSHA with as many clients, measured in the same run: the
// pairs run in benchRounds rounds, each after its own baseline, and the
// medians are reported. Two ratios: pair-ratio divides pairs/s by the
// trivial rate; op-ratio divides operations/s (two per pair: an
// acquisition and a release, each one script call when served alone) by
// it, comparing script operations with script calls. Each round also runs
// as many pairs through a store with batching off (WithMaxBatch(1)) on the
// same pool, reported as unbatched-pairs/s; which of the two goes first
// alternates between rounds.
// Run it with a fixed count, e.g. -benchtime=20000x, so that the baseline
// runs once per round rather than once per calibration step.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, workers := range []int{1, 8, 32, 64} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			benchAcquireRelease(b, workers, nil)
		})
	}
	// One filtered case: a country matching a quarter of the pool.
	b.Run("workers=32/country", func(b *testing.B) {
		benchAcquireRelease(b, 32, &pharox.Filters{Country: "DE"})
	})
}

func benchAcquireRelease(b *testing.B, workers int, filters *pharox.Filters) {
	client := testClient(b, func(o *goredis.Options) {
		o.PoolSize = 2 * workers
		o.MinIdleConns = workers
	})
	prefix := testPrefix()
	b.Cleanup(func() { dropPrefix(b, client, prefix) })
	s, err := New(client, WithPrefix(prefix))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := s.LoadScripts(ctx); err != nil {
		b.Fatal(err)
	}
	unbatched, err := New(client, WithPrefix(prefix), WithMaxBatch(1))
	if err != nil {
		b.Fatal(err)
	}
	req := benchPool(b, s, filters)

	// The machine may be shared and its load drift, so the run is split in
	// rounds, each preceded by its own baseline; the medians are reported.
	b.ResetTimer()
	rounds := benchRounds
	if b.N < minPairsForBaseline {
		rounds = 1
	}
	var pairRates, unbatchedRates, ceilRates, ratios, opRatios []float64
	done := 0
	for r := range rounds {
		n := b.N / rounds
		if r == rounds-1 {
			n = b.N - done
		}
		done += n
		if b.N >= minPairsForBaseline {
			b.StopTimer()
			ceiling, err := evalshaCeiling(ctx, client, workers, baselineRequests)
			if err != nil && r == 0 {
				b.Logf("no baseline: %v", err)
			}
			b.StartTimer()
			if ceiling > 0 {
				ceilRates = append(ceilRates, ceiling)
			}
		}
		runUnbatched := func() {
			b.StopTimer()
			elapsed := runPairs(b, unbatched, req, workers, n)
			unbatchedRates = append(unbatchedRates, float64(n)/elapsed.Seconds())
			b.StartTimer()
		}
		if r%2 == 1 {
			runUnbatched()
		}
		elapsed := runPairs(b, s, req, workers, n)
		pairRates = append(pairRates, float64(n)/elapsed.Seconds())
		if r%2 == 0 {
			runUnbatched()
		}
		if len(ceilRates) == len(pairRates) {
			ratios = append(ratios, pairRates[r]/ceilRates[r])
			opRatios = append(opRatios, 2*pairRates[r]/ceilRates[r])
		}
	}
	b.ReportMetric(median(pairRates), "pairs/s")
	b.ReportMetric(median(unbatchedRates), "unbatched-pairs/s")
	if len(ratios) == rounds {
		b.ReportMetric(median(ceilRates), "evalsha/s")
		b.ReportMetric(median(ratios), "pair-ratio")
		b.ReportMetric(median(opRatios), "op-ratio")
	}
}

// benchPool adds the benchmark pool to s and returns the request the
// benchmarks repeat: a one-minute first_available lease with filters.
func benchPool(b testing.TB, s *Store, filters *pharox.Filters) pharox.AcquireRequest {
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	proxies := make([]pharox.Proxy, benchPoolSize)
	for i := range proxies {
		maxc := 2
		proxies[i] = pharox.Proxy{
			PoolID: pool.ID, Host: fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), Port: 8080,
			Protocol: pharox.ProtocolHTTP, Country: []string{"US", "DE", "BR", "JP"}[i%4],
			MaxConcurrency: &maxc,
		}
	}
	if _, err := s.AddProxies(ctx, proxies); err != nil {
		b.Fatal(err)
	}
	consumer, err := s.EnsureConsumer(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	return pharox.AcquireRequest{
		PoolName: "bench", ConsumerID: consumer.ID, ConsumerName: consumer.Name,
		Duration: time.Minute, Strategy: pharox.FirstAvailable, Filters: filters,
	}
}

// BenchmarkServerCost measures what a batch of n acquire+release pairs
// costs Redis itself, without the network and the client: each iteration
// runs one acquire_many.lua and one release_many.lua call of n items (one
// acquire.lua and one release.lua for n=1) and reads EVALSHA's time from
// INFO commandstats, then does the same for two calls of a trivial script
// (the baseline). It reports server-us/pair, trivial-us/call and
// x-trivial, their quotient: how many trivial script calls a pair costs.
// It needs the server to itself (another client's EVALSHA would count).
// Run under callgrind (valgrind --tool=callgrind redis-server --port N
// --save "" --appendonly no, with PHAROX_TEST_REDIS_URL pointing there) it
// gives instruction counts, which do not depend on the machine's load.
func BenchmarkServerCost(b *testing.B) {
	for _, n := range []int{1, 12, 64} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) { benchServerCost(b, n) })
	}
}

func benchServerCost(b *testing.B, n int) {
	s := newTestStore(b)
	client := s.rdb
	ctx := context.Background()
	req := benchPool(b, s, nil)
	trivial := goredis.NewScript(trivialScript)
	if err := trivial.Load(ctx, client).Err(); err != nil {
		b.Fatal(err)
	}
	reqs := slices.Repeat([]pharox.AcquireRequest{req}, n)
	key := acquireKey{pool: req.PoolName, strategy: string(req.Strategy)}
	ids := make([]uuid.UUID, n)
	var pairUsec, trivialUsec float64
	b.ResetTimer()
	for range b.N {
		u0 := evalshaUsec(b, client)
		for i, r := range s.execAcquire(ctx, key, reqs) {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
			ids[i] = r.Val.ID
		}
		for _, r := range s.execRelease(ctx, struct{}{}, ids) {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
		u1 := evalshaUsec(b, client)
		for range 2 {
			if err := trivial.EvalSha(ctx, client, nil).Err(); err != nil {
				b.Fatal(err)
			}
		}
		u2 := evalshaUsec(b, client)
		pairUsec += u1 - u0
		trivialUsec += u2 - u1
	}
	perPair := pairUsec / float64(b.N*n)
	perTrivial := trivialUsec / float64(2*b.N)
	b.ReportMetric(perPair, "server-us/pair")
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

// Benchmark rounds and the baseline's size per round.
const (
	benchRounds         = 5
	minPairsForBaseline = 1000
	baselineRequests    = 20000
)

// runPairs runs n acquire+release pairs on workers goroutines and returns
// the wall time they took.
func runPairs(b testing.TB, s *Store, req pharox.AcquireRequest, workers, n int) time.Duration {
	ctx := context.Background()
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				l, err := s.AcquireLease(ctx, req)
				if err == nil {
					_, err = s.ReleaseLease(ctx, l.ID)
				}
				if err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	return elapsed
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkTargets compares acquire+release pairs for a target with half
// the pool cooling down for it against pairs without a target (see
// storagetest.BenchmarkTargets).
func BenchmarkTargets(b *testing.B) {
	storagetest.BenchmarkTargets(b, func(b *testing.B) pharox.Storage { return newTestStore(b) })
}
