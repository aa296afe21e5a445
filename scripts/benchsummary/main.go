// Command benchsummary runs the benchmarks behind the summary table of
// BENCHMARKS.md and prints that table: each row a figure, the baseline
// measured in the same run, their ratio and the target.
//
// Run it from the repository's root:
//
//	go run ./scripts/benchsummary
//
// The PostgreSQL and Redis rows use PHAROX_TEST_POSTGRES_URL and
// PHAROX_TEST_REDIS_URL, or else the local servers the README names
// (postgres://postgres@127.0.0.1:5432/test, redis://127.0.0.1:6379/0); the
// MongoDB row PHAROX_TEST_MONGO_URL, or else a FerretDB v1 the test
// starts (see internal/mongotest); a row whose benchmark did not run says
// so. -scale shortens every run (for
// example -scale 0.05 to check that the command works); the table's
// figures come from -scale 1, about ten minutes on a 2-core machine.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Defaults for the stores' servers: the README's local test servers.
const (
	defaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	defaultRedisURL    = "redis://127.0.0.1:6379/0"
)

// run is one `go test -bench` invocation.
type run struct {
	pkg, bench string
	n          int // -benchtime in iterations, before -scale
}

// metrics holds one run's results: benchmark name (without the -GOMAXPROCS
// suffix) -> unit -> value.
type metrics map[string]map[string]float64

func (m metrics) get(name, unit string) (float64, bool) {
	v, ok := m[name][unit]
	return v, ok
}

// row is one line of the table, read from the metrics of its run.
type row struct {
	run    int // index into runs
	what   string
	target string
	read   func(m metrics) (figure, baseline, ratio string, met string)
}

var runs = []run{
	{"./storage/memory/", `BenchmarkAcquireRelease$/proxies=100000/free/filter=none/serial`, 200000},
	{"./storage/sqlite/", `BenchmarkAcquireRelease$/(memory|sqlite)/workers=1$`, 6000},
	{"./storage/postgres/", `BenchmarkAcquireRelease$/workers=32$`, 8000},
	{"./storage/redis/", `BenchmarkAcquireRelease$/workers=32$`, 20000},
	{"./server/", `BenchmarkAcquireRelease$`, 20000},
	{"./gateway/", `BenchmarkThroughput64$`, 20000},
	{"./gateway/", `BenchmarkAddedLatency$`, 5000},
	{"./health/", `BenchmarkSweep$`, 2000},
	{"./transport/", `BenchmarkThroughput32$`, 32000},
	{"./gateway/", `BenchmarkMeteringThroughput64$`, 16000},
	{"./storage/mongo/", `BenchmarkAcquireRelease$/workers=8$`, 400},
}

var rows = []row{
	{0, "memory: serial acquire+release pair, 100,000 proxies", "< 1.5 µs", func(m metrics) (string, string, string, string) {
		const b = "BenchmarkAcquireRelease/proxies=100000/free/filter=none/serial"
		ns, ok1 := m.get(b, "ns/op")
		x, ok2 := m.get(b, "x-baseline")
		cpu, ok3 := m.get(b, "cpu-ns/op")
		xc, ok4 := m.get(b, "x-baseline-cpu")
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return missing()
		}
		return f("%.2f µs (CPU %.2f µs)", ns/1000, cpu/1000), f("%.0f ns (CPU %.0f ns): a mutex-guarded map lookup + counter pair", ns/x, cpu/xc),
			f("%.0f× (CPU: %.0f×)", x, xc), both(ns < 1500, cpu < 1500)
	}},
	{1, "SQLite: serial pairs/s, 1,000 proxies", "≥ 2,000 pairs/s", func(m metrics) (string, string, string, string) {
		s, ok1 := m.get("BenchmarkAcquireRelease/sqlite/workers=1", "pairs/s")
		mem, ok2 := m.get("BenchmarkAcquireRelease/memory/workers=1", "pairs/s")
		cpu, ok3 := m.get("BenchmarkAcquireRelease/sqlite/workers=1", "cpu-µs/pair")
		if !ok1 || !ok2 || !ok3 {
			return missing()
		}
		// One pair at a time: an unloaded core does 1/cpu pairs per second.
		return f("%.0f pairs/s (CPU %.0f µs/pair: %.0f pairs/s on an unloaded core)", s, cpu, 1e6/cpu), f("memory store %.0f pairs/s", mem),
			f("1/%.0f", mem/s), both(s >= 2000, 1e6/cpu >= 2000)
	}},
	{2, "PostgreSQL: pairs/s at 32 workers, 1,000 proxies", "≥ 3,000 pairs/s and ≥ 3× naive", func(m metrics) (string, string, string, string) {
		const b = "BenchmarkAcquireRelease/workers=32"
		r, ok1 := m.get(b, "pairs/s")
		naive, ok2 := m.get(b, "naive-pairs/s")
		if !ok1 || !ok2 {
			return missing()
		}
		return f("%.0f pairs/s", r), f("naive FOR UPDATE %.0f pairs/s", naive), f("%.2f×", r/naive), yes(r >= 3000 && r/naive >= 3)
	}},
	{3, "Redis: pairs/s at 32 workers", "≥ 15,000 pairs/s and ops ≥ 0.40× EVALSHA", func(m metrics) (string, string, string, string) {
		const b = "BenchmarkAcquireRelease/workers=32"
		r, ok1 := m.get(b, "pairs/s")
		ev, ok2 := m.get(b, "evalsha/s")
		op, ok3 := m.get(b, "x-evalsha")
		if !ok1 {
			return missing()
		}
		if !ok2 || !ok3 {
			// Short runs, or no redis-benchmark: no EVALSHA baseline.
			u, _ := m.get(b, "unbatched-pairs/s")
			return f("%.0f pairs/s", r), f("unbatched %.0f pairs/s (no EVALSHA baseline: needs redis-benchmark and -scale 1)", u), f("%.2f× unbatched", r/u), yes(r >= 15000)
		}
		return f("%.0f pairs/s", r), f("trivial EVALSHA %.0f/s (redis-benchmark)", ev), f("%.2f× (operations)", op), yes(r >= 15000 && op >= 0.40)
	}},
	{4, "service: handler path CPU per pair (no network)", "≤ 3× (Manager + trivial JSON handler)", func(m metrics) (string, string, string, string) {
		h, ok1 := m.get("BenchmarkAcquireRelease/handler", "cpu-us/pair")
		mg, ok2 := m.get("BenchmarkAcquireRelease/manager", "cpu-us/pair")
		tr, ok3 := m.get("BenchmarkAcquireRelease/trivial-handler", "cpu-us/pair")
		if !ok1 || !ok2 || !ok3 {
			return missing()
		}
		return f("%.1f µs", h), f("Manager %.1f µs + trivial handler %.1f µs", mg, tr), f("%.2f×", h/(mg+tr)), yes(h/(mg+tr) <= 3)
	}},
	{4, "service: pairs/s over HTTP, 32 clients, memory store", "≥ 0.7× trivial", func(m metrics) (string, string, string, string) {
		h, ok1 := m.get("BenchmarkAcquireRelease/http", "pairs/s")
		t, ok2 := m.get("BenchmarkAcquireRelease/trivial-http", "pairs/s")
		hc, ok3 := m.get("BenchmarkAcquireRelease/http", "cpu-us/pair")
		tc, ok4 := m.get("BenchmarkAcquireRelease/trivial-http", "cpu-us/pair")
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return missing()
		}
		return f("%.0f pairs/s (%.0f µs CPU/pair)", h, hc), f("trivial net/http JSON handler %.0f pairs/s (%.0f µs CPU/pair)", t, tc),
			f("%.2f× (CPU: %.2f×)", h/t, tc/hc), both(h/t >= 0.7, tc/hc >= 0.7)
	}},
	{4, "service: same, Prometheus metrics on", "≥ 0.7× trivial", func(m metrics) (string, string, string, string) {
		h, ok1 := m.get("BenchmarkAcquireRelease/http+metrics", "pairs/s")
		t, ok2 := m.get("BenchmarkAcquireRelease/trivial-http", "pairs/s")
		hc, ok3 := m.get("BenchmarkAcquireRelease/http+metrics", "cpu-us/pair")
		tc, ok4 := m.get("BenchmarkAcquireRelease/trivial-http", "cpu-us/pair")
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return missing()
		}
		return f("%.0f pairs/s (%.0f µs CPU/pair)", h, hc), f("trivial %.0f pairs/s", t), f("%.2f× (CPU: %.2f×)", h/t, tc/hc), both(h/t >= 0.7, tc/hc >= 0.7)
	}},
	{5, "gateway: req/s at 64 clients, leasing on", "≥ 0.9× bare hop, ahead of goproxy", func(m metrics) (string, string, string, string) {
		const b = "BenchmarkThroughput64"
		g, ok1 := m.get(b, "gateway-req/s")
		bare, ok2 := m.get(b, "bare-req/s")
		gp, ok3 := m.get(b, "goproxy-req/s")
		d, ok4 := m.get(b, "direct-req/s")
		xc, ok5 := m.get(b, "x_bare_cpu")
		gxc, ok6 := m.get(b, "goproxy-x_bare_cpu")
		if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 {
			return missing()
		}
		return f("%.0f req/s", g), f("bare hop %.0f, goproxy %.0f (%.2f×), direct %.0f req/s", bare, gp, gp/bare, d),
			f("%.2f× bare (CPU: %.2f×, goproxy %.2f×); %.2f× direct", g/bare, xc, gxc, g/d), both(g/bare >= 0.9 && g > gp, xc >= 0.9 && xc > gxc)
	}},
	{6, "gateway: added median latency, sequential GETs", "< 50 µs over the bare hop", func(m metrics) (string, string, string, string) {
		const b = "BenchmarkAddedLatency"
		g, ok1 := m.get(b, "gateway-p50-µs")
		bare, ok2 := m.get(b, "bare-p50-µs")
		gp, ok3 := m.get(b, "goproxy-p50-µs")
		d, ok4 := m.get(b, "direct-p50-µs")
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return missing()
		}
		return f("%.0f µs", g), f("bare hop %.0f µs, goproxy %.0f µs, direct %.0f µs", bare, gp, d), f("+%.0f µs over bare, +%.0f µs over direct", g-bare, g-d), yes(g-bare < 50)
	}},
	{9, "gateway: req/s at 64 clients, metering on", "≥ 0.95× metering off", func(m metrics) (string, string, string, string) {
		const b = "BenchmarkMeteringThroughput64"
		r, ok1 := m.get(b, "metered-req/s")
		off, ok2 := m.get(b, "unmetered-req/s")
		rc, ok3 := m.get(b, "metered-cpu-us/req")
		offc, ok4 := m.get(b, "unmetered-cpu-us/req")
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return missing()
		}
		return f("%.0f req/s (%.0f µs CPU/req)", r, rc), f("DisableMetering %.0f req/s (%.0f µs CPU/req)", off, offc),
			f("%.2f× (CPU: %.2f×)", r/off, offc/rc), both(r/off >= 0.95, offc/rc >= 0.95)
	}},
	{7, "health: sweep 2,000 proxies, concurrency 200", "< 10 s", func(m metrics) (string, string, string, string) {
		s, ok1 := m.get("BenchmarkSweep", "sweep-s")
		r, ok2 := m.get("BenchmarkSweep", "sweep/direct")
		if !ok1 || !ok2 {
			return missing()
		}
		return f("%.2f s", s), f("the same requests direct: %.2f s", s/r), f("%.1f×", r), yes(s < 10)
	}},
	{8, "transport: req/s at 32 concurrent keep-alive requests (forwarded / CONNECT)", "≥ 0.9× http.Transport with a fixed Proxy", func(m metrics) (string, string, string, string) {
		const fw, co = "BenchmarkThroughput32/forward", "BenchmarkThroughput32/connect"
		fr, ok1 := m.get(fw, "req/s")
		fb, ok2 := m.get(fw, "baseline-req/s")
		cr, ok3 := m.get(co, "req/s")
		cb, ok4 := m.get(co, "baseline-req/s")
		fc, ok5 := m.get(fw, "cpu-ratio")
		cc, ok6 := m.get(co, "cpu-ratio")
		if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 {
			return missing()
		}
		return f("%.0f / %.0f req/s", fr, cr), f("http.Transport %.0f / %.0f req/s", fb, cb),
			f("%.2f× / %.2f× (CPU: %.2f× / %.2f×)", fr/fb, cr/cb, fc, cc), both(fr/fb >= 0.9 && cr/cb >= 0.9, fc >= 0.9 && cc >= 0.9)
	}},
	{9, "MongoDB store on FerretDB v1: pairs/s at 8 workers, 100 proxies (capped: a consumer with max_concurrent_leases)", "the ratio to a trivial findOneAndUpdate loop, reported; capped ≤ 1.2× plain", func(m metrics) (string, string, string, string) {
		const b = "BenchmarkAcquireRelease/workers=8"
		r, ok1 := m.get(b, "pairs/s")
		fam, ok2 := m.get(b, "trivial-fam/s")
		x, ok3 := m.get(b, "x-trivial-fam")
		c, ok4 := m.get(b, "capped-pairs/s")
		cp, ok5 := m.get(b, "cap/plain")
		if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
			return missing()
		}
		return f("%.0f pairs/s, capped %.0f pairs/s (%.2f× the time)", r, c, cp), f("trivial findOneAndUpdate %.0f/s", fam),
			f("%.2f pairs per 2 findOneAndUpdates", x), yes(cp <= 1.2)
	}},
}

func f(format string, a ...any) string { return fmt.Sprintf(format, a...) }

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

// both reads a target met by the wall-clock figure, or else by the CPU
// figure only (what a machine without neighbours would show).
func both(wall, cpu bool) string {
	switch {
	case wall:
		return "yes"
	case cpu:
		return "by CPU only (machine shared)"
	}
	return "no"
}

func missing() (string, string, string, string) {
	return "did not run (see its output above)", "", "", ""
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

// parse reads `go test -bench` output.
func parse(out []byte, into metrics) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		fields := strings.Fields(m[2])
		vals := map[string]float64{}
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				break
			}
			vals[fields[i+1]] = v
		}
		into[m[1]] = vals
	}
}

func main() {
	scale := flag.Float64("scale", 1, "multiply every benchmark's iteration count by this (0.05 for a quick check)")
	from := flag.String("from", "", "print the table from this saved output of an earlier run (its standard error) instead of running the benchmarks")
	flag.Parse()
	if *from != "" {
		out, err := os.ReadFile(*from)
		if err != nil {
			fmt.Fprintf(os.Stderr, "benchsummary: -from: %v\n", err)
			os.Exit(1)
		}
		printTable(splitRuns(out))
		return
	}
	if *scale <= 0 || *scale > 100 {
		fmt.Fprintln(os.Stderr, "benchsummary: -scale must be a number above 0 and at most 100")
		os.Exit(2)
	}
	env := os.Environ()
	for _, kv := range [][2]string{{"PHAROX_TEST_POSTGRES_URL", defaultPostgresURL}, {"PHAROX_TEST_REDIS_URL", defaultRedisURL}} {
		if os.Getenv(kv[0]) == "" {
			env = append(env, kv[0]+"="+kv[1])
		}
	}
	start := time.Now()
	load := loadAverage()
	results := make([]metrics, len(runs))
	for i, r := range runs {
		n := max(1, int(float64(r.n)**scale))
		args := []string{"test", "-run", "^$", "-bench", r.bench, "-benchtime", strconv.Itoa(n) + "x", "-count", "1", r.pkg}
		fmt.Fprintf(os.Stderr, "== go %s\n", strings.Join(args, " "))
		cmd := exec.Command("go", args...)
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout = io.MultiWriter(&out, os.Stderr)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "benchsummary: %s: %v\n", r.pkg, err)
		}
		results[i] = metrics{}
		parse(out.Bytes(), results[i])
	}

	fmt.Printf("Measured %s, %d CPUs (GOMAXPROCS %d), %s; load average %s at the start, %s at the end; %s in all.\n\n",
		start.UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(),
		load, loadAverage(), time.Since(start).Round(time.Second))
	printTable(results)
}

// splitRuns parses a saved run's output: each run's part starts with the
// "== go test" line printed before it.
func splitRuns(out []byte) []metrics {
	results := make([]metrics, len(runs))
	for i := range results {
		results[i] = metrics{}
	}
	i := -1
	for _, part := range bytes.Split(append([]byte("\n"), out...), []byte("\n== go ")) {
		if i >= 0 && i < len(runs) {
			parse(part, results[i])
		}
		i++
	}
	return results
}

func printTable(results []metrics) {
	fmt.Println("| figure | result | baseline in the same run | ratio | target | met |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rows {
		fig, base, ratio, met := r.read(results[r.run])
		fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", r.what, fig, base, ratio, r.target, met)
	}
}

// loadAverage is the 1-minute load average, or "unknown" off Linux.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	if fields := strings.Fields(string(b)); len(fields) > 0 {
		return fields[0]
	}
	return "unknown"
}
