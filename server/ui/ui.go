// Package ui is the operator web dashboard of the pharox HTTP service: a
// few static files (HTML, CSS and JavaScript modules, no build step)
// embedded in the binary, and the in-memory history behind its charts.
//
// The pages hold no data of their own. In the browser they ask for an
// admin API key and read everything from the same JSON API the clients
// use, sending the key in the X-API-Key header: a consumer key is refused
// by the API itself (403). The static files carry no data and are served
// without a key.
//
// The server mounts [Handler] at /ui/ and serves [Dashboard] from
// GET /v1/admin/dashboard, built by [Build] from the store and a
// [Recorder]. The Recorder keeps a short ring of samples (acquisitions,
// no-proxy-available answers and proxies per health status) taken by the
// server process every few seconds, and the health sweeps it is running.
// It lives in memory: a restart starts the charts afresh, and each
// server process charts the acquisitions it answered itself.
package ui

import (
	"context"
	"embed"
	"errors"
	"io/fs"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

//go:embed static
var static embed.FS

// contentSecurityPolicy allows only the dashboard's own files and API: no
// inline script, no third-party origin, no framing. Even if a proxy field
// carried markup and a bug rendered it as HTML, it could not run.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"

// Static returns the dashboard's embedded files: index.html, style.css
// and the JavaScript modules.
func Static() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		// The directory is embedded at build time: only a broken build
		// can get here.
		panic("pharox ui: embedded static files missing: " + err.Error())
	}
	return sub
}

// Handler serves the dashboard's static files. Mount it with the /ui
// prefix stripped: http.StripPrefix("/ui", ui.Handler()) on "GET /ui/".
func Handler() http.Handler {
	files := http.FileServerFS(Static())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// Embedded files have no modification time; revalidate so that
		// an upgraded binary's files are picked up.
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// Dashboard is everything the dashboard's overview shows, in one answer.
type Dashboard struct {
	// CollectedAt is the server's clock when the answer was built; the
	// page uses it to count lease time left without trusting its own
	// clock.
	CollectedAt api.Time        `json:"collected_at"`
	Pools       []DashboardPool `json:"pools"`
	// SweepEnabled tells whether this server can run health sweeps.
	SweepEnabled bool `json:"sweep_enabled"`
	// SweepTarget is the URL a sweep probes when none is given; empty
	// when the server has none, so a sweep must name one.
	SweepTarget string `json:"sweep_target"`
	// Sweeps lists the health sweeps running now, then the last finished
	// sweep of each pool, as seen by this server process.
	Sweeps []DashboardSweep `json:"sweeps"`
	// SampleIntervalSeconds is the time between two points of Series; 0
	// when sampling is off.
	SampleIntervalSeconds float64 `json:"sample_interval_seconds"`
	// Series is the recent history, oldest first.
	Series []DashboardPoint `json:"series"`
	// AcquiredTotal and NoProxyTotal count this process's acquisitions
	// and no-proxy-available answers since it started.
	AcquiredTotal int64 `json:"acquired_total"`
	NoProxyTotal  int64 `json:"no_proxy_total"`
}

// DashboardPool is a pool with its occupancy.
type DashboardPool struct {
	Pool  api.Pool      `json:"pool"`
	Stats api.PoolStats `json:"stats"`
}

// DashboardPoint is one sample of the history.
type DashboardPoint struct {
	At api.Time `json:"at"`
	// Acquired and NoProxy count the acquisitions and no-proxy-available
	// answers since the previous point.
	Acquired int64 `json:"acquired"`
	NoProxy  int64 `json:"no_proxy"`
	// ByStatus counts the proxies of all pools per health status.
	ByStatus map[string]int `json:"by_status"`
}

// DashboardSweep is a health sweep, running or finished.
type DashboardSweep struct {
	Pool       string    `json:"pool"`
	Running    bool      `json:"running"`
	StartedAt  api.Time  `json:"started_at"`
	FinishedAt *api.Time `json:"finished_at,omitempty"`
	// Total and Probed are a running sweep's progress: the proxies of the
	// pool, and how many of them have a health check newer than the
	// sweep's start.
	Total  int `json:"total"`
	Probed int `json:"probed"`
	// Result is a finished sweep's summary; Error its client-facing
	// failure, never an internal error's text.
	Result *api.SweepResult `json:"result,omitempty"`
	Error  string           `json:"error,omitempty"`
}

// Recorder keeps the dashboard's history: a fixed ring of samples and the
// sweeps in flight. It is safe for concurrent use.
type Recorder struct {
	interval time.Duration
	acquired atomic.Int64
	noProxy  atomic.Int64

	mu         sync.Mutex
	ring       []DashboardPoint
	next       int
	full       bool
	lastAcq    int64
	lastMiss   int64
	running    map[uint64]*DashboardSweep
	runID      uint64
	lastByPool map[string]DashboardSweep
}

// NewRecorder returns a Recorder that keeps the last size samples taken
// every interval (interval is only reported to the page; the caller
// samples). size below 1 is 1.
func NewRecorder(size int, interval time.Duration) *Recorder {
	return &Recorder{
		interval:   interval,
		ring:       make([]DashboardPoint, max(size, 1)),
		running:    make(map[uint64]*DashboardSweep),
		lastByPool: make(map[string]DashboardSweep),
	}
}

// CountAcquire counts one acquisition attempt by its error: nil is an
// acquisition, an error wrapping pharox.ErrNoProxyAvailable a miss, and
// anything else (bad input, unknown pool) is not charted.
func (r *Recorder) CountAcquire(err error) {
	switch {
	case err == nil:
		r.acquired.Add(1)
	case errors.Is(err, pharox.ErrNoProxyAvailable):
		r.noProxy.Add(1)
	}
}

// Sample appends a point at t with the acquisitions and misses counted
// since the previous point and byStatus, the proxies per health status.
func (r *Recorder) Sample(t time.Time, byStatus map[string]int) {
	acq, miss := r.acquired.Load(), r.noProxy.Load()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ring[r.next] = DashboardPoint{
		At: api.NewTime(t), Acquired: acq - r.lastAcq, NoProxy: miss - r.lastMiss,
		ByStatus: byStatus,
	}
	r.lastAcq, r.lastMiss = acq, miss
	r.next++
	if r.next == len(r.ring) {
		r.next, r.full = 0, true
	}
}

// Collect reads the proxies per health status of every pool from store
// and records a sample. A pool deleted while it is read is passed over.
func (r *Recorder) Collect(ctx context.Context, store pharox.Storage) error {
	pools, err := store.ListPools(ctx)
	if err != nil {
		return err
	}
	byStatus := make(map[string]int, len(pharox.AllProxyStatuses))
	for _, st := range pharox.AllProxyStatuses {
		byStatus[string(st)] = 0
	}
	for _, p := range pools {
		st, err := store.GetPoolStats(ctx, p.Name)
		if errors.Is(err, pharox.ErrPoolNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		for status, n := range st.ByStatus {
			byStatus[string(status)] += n
		}
	}
	r.Sample(time.Now(), byStatus)
	return nil
}

// Series returns the samples, oldest first. The slice is a copy; the maps
// in it are never modified after they are recorded.
func (r *Recorder) Series() []DashboardPoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full {
		return slices.Clone(r.ring[:r.next])
	}
	return append(slices.Clone(r.ring[r.next:]), r.ring[:r.next]...)
}

// Totals returns the acquisitions and no-proxy-available answers counted
// so far.
func (r *Recorder) Totals() (acquired, noProxy int64) {
	return r.acquired.Load(), r.noProxy.Load()
}

// SweepStarted records that a sweep of pool started now. Call the
// returned function exactly once when it ends, with its result, or with
// the detail the client was told when it failed.
func (r *Recorder) SweepStarted(pool string) (done func(res api.SweepResult, errDetail string)) {
	r.mu.Lock()
	r.runID++
	id := r.runID
	sw := &DashboardSweep{Pool: pool, Running: true, StartedAt: api.NewTime(time.Now().UTC().Truncate(time.Microsecond))}
	r.running[id] = sw
	r.mu.Unlock()
	var once sync.Once
	return func(res api.SweepResult, errDetail string) {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			delete(r.running, id)
			fin := api.NewTime(time.Now().UTC())
			out := DashboardSweep{Pool: pool, StartedAt: sw.StartedAt, FinishedAt: &fin, Error: errDetail}
			if errDetail == "" {
				out.Result = &res
				out.Total = res.Checked + res.Skipped
				out.Probed = res.Checked
			}
			r.lastByPool[pool] = out
		})
	}
}

// Sweeps returns the running sweeps, oldest first, then the last
// finished sweep of each pool, by pool name.
func (r *Recorder) Sweeps() []DashboardSweep {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]DashboardSweep, 0, len(r.running)+len(r.lastByPool))
	for _, sw := range r.running {
		out = append(out, *sw)
	}
	slices.SortFunc(out, func(a, b DashboardSweep) int { return a.StartedAt.Compare(b.StartedAt.Time) })
	n := len(out)
	for _, sw := range r.lastByPool {
		out = append(out, sw)
	}
	slices.SortFunc(out[n:], func(a, b DashboardSweep) int {
		if a.Pool < b.Pool {
			return -1
		}
		if a.Pool > b.Pool {
			return 1
		}
		return 0
	})
	return out
}

// forget drops what the Recorder remembers of a pool's sweeps, for a pool
// that no longer exists.
func (r *Recorder) forget(pools map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name := range r.lastByPool {
		if !pools[name] {
			delete(r.lastByPool, name)
		}
	}
}

// Build assembles the dashboard's overview from store and rec: every pool
// with its stats, the sweeps with the progress of running ones, and the
// history.
func Build(ctx context.Context, store pharox.Storage, rec *Recorder) (*Dashboard, error) {
	pools, err := store.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	out := &Dashboard{
		Pools:                 make([]DashboardPool, 0, len(pools)),
		SampleIntervalSeconds: rec.interval.Seconds(),
		Series:                rec.Series(),
	}
	out.AcquiredTotal, out.NoProxyTotal = rec.Totals()
	byName := make(map[string]*pharox.Pool, len(pools))
	for _, p := range pools {
		st, err := store.GetPoolStats(ctx, p.Name)
		if errors.Is(err, pharox.ErrPoolNotFound) {
			continue // deleted since it was listed
		}
		if err != nil {
			return nil, err
		}
		byName[p.Name] = p
		out.Pools = append(out.Pools, DashboardPool{Pool: api.FromPool(p), Stats: api.FromPoolStats(st)})
	}
	exists := make(map[string]bool, len(byName))
	for name := range byName {
		exists[name] = true
	}
	rec.forget(exists)
	out.Sweeps = rec.Sweeps()
	for i := range out.Sweeps {
		sw := &out.Sweeps[i]
		p := byName[sw.Pool]
		if !sw.Running || p == nil {
			continue
		}
		// The health orchestrator stores each result as soon as it has
		// it, so the proxies checked since the start are the progress.
		proxies, err := store.ListProxies(ctx, p.ID)
		if err != nil {
			if errors.Is(err, pharox.ErrPoolNotFound) {
				continue
			}
			return nil, err
		}
		sw.Total = len(proxies)
		for _, px := range proxies {
			if px.CheckedAt != nil && !px.CheckedAt.Before(sw.StartedAt.Time) {
				sw.Probed++
			}
		}
	}
	if out.Series == nil {
		out.Series = []DashboardPoint{}
	}
	out.CollectedAt = api.NewTime(time.Now().UTC())
	return out, nil
}
