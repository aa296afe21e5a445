package ui_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/server/ui"
)

func TestRecorderSeriesKeepsLastSamplesWithDeltas(t *testing.T) {
	r := ui.NewRecorder(3, time.Second)
	if got := r.Series(); len(got) != 0 {
		t.Fatalf("new recorder has %d samples", len(got))
	}
	miss := fmt.Errorf("acquire: %w", pharox.ErrNoProxyAvailable)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// Five samples into a ring of three: acquisitions i+1 and misses i
	// between sample i-1 and sample i.
	for i := range 5 {
		for range i + 1 {
			r.CountAcquire(nil)
		}
		for range i {
			r.CountAcquire(miss)
		}
		r.CountAcquire(pharox.ErrPoolNotFound) // not charted
		r.Sample(t0.Add(time.Duration(i)*time.Second), map[string]int{"active": i})
	}
	got := r.Series()
	if len(got) != 3 {
		t.Fatalf("%d samples, want the last 3", len(got))
	}
	for j, p := range got {
		i := j + 2
		if !p.At.Equal(t0.Add(time.Duration(i)*time.Second)) || p.Acquired != int64(i+1) || p.NoProxy != int64(i) || p.ByStatus["active"] != i {
			t.Errorf("sample %d = %+v, want at +%ds, %d acquired, %d missed", j, p, i, i+1, i)
		}
	}
	acq, missed := r.Totals()
	if acq != 15 || missed != 10 {
		t.Errorf("totals %d/%d, want 15/10", acq, missed)
	}
	// The returned slice is a copy.
	got[0].Acquired = 999
	if r.Series()[0].Acquired == 999 {
		t.Error("Series exposes the ring")
	}
}

func TestRecorderSweeps(t *testing.T) {
	r := ui.NewRecorder(1, 0)
	doneA := r.SweepStarted("a")
	doneB := r.SweepStarted("b")
	sw := r.Sweeps()
	if len(sw) != 2 || !sw[0].Running || sw[0].Pool != "a" || sw[1].Pool != "b" {
		t.Fatalf("running sweeps = %+v", sw)
	}
	doneA(api.SweepResult{Pool: "a", Checked: 3, Skipped: 1}, "")
	doneA(api.SweepResult{}, "called twice") // ignored
	doneB(api.SweepResult{}, "Probe target unreachable")
	sw = r.Sweeps()
	if len(sw) != 2 {
		t.Fatalf("sweeps = %+v", sw)
	}
	a, b := sw[0], sw[1]
	if a.Running || a.Pool != "a" || a.Result == nil || a.Result.Checked != 3 || a.Error != "" || a.FinishedAt == nil || a.Total != 4 {
		t.Errorf("finished sweep of a = %+v", a)
	}
	if b.Running || b.Pool != "b" || b.Result != nil || b.Error != "Probe target unreachable" {
		t.Errorf("failed sweep of b = %+v", b)
	}
}

func TestHandlerServesEmbeddedFilesSafely(t *testing.T) {
	h := http.StripPrefix("/ui", ui.Handler())
	for path, wantType := range map[string]string{
		"/ui/":          "text/html",
		"/ui/app.js":    "text/javascript",
		"/ui/dom.js":    "text/javascript",
		"/ui/style.css": "text/css",
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 {
			t.Errorf("GET %s: %d", path, rec.Code)
			continue
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, wantType) {
			t.Errorf("GET %s: Content-Type %q, want %s", path, ct, wantType)
		}
		csp := rec.Header().Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
		if rec.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no nosniff", path)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/ui/missing.js", nil))
	if rec.Code != 404 {
		t.Errorf("GET a missing file: %d", rec.Code)
	}
}

// TestScriptsRenderTextOnly guards the rule that data never becomes
// markup: no script may use the DOM's HTML sinks.
func TestScriptsRenderTextOnly(t *testing.T) {
	sinks := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc`)
	files := 0
	err := fs.WalkDir(ui.Static(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".js") {
			return err
		}
		files++
		b, err := fs.ReadFile(ui.Static(), path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if sinks.MatchString(line) {
				t.Errorf("%s:%d uses an HTML sink: %s", path, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 3 {
		t.Fatalf("found %d scripts", files)
	}
}

func TestBuildShowsSweepProgress(t *testing.T) {
	ctx := context.Background()
	store := testfactory.Memory(t)
	defer store.Close()
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: "p"})
	if err != nil {
		t.Fatal(err)
	}
	in := make([]pharox.Proxy, 3)
	for i := range in {
		in[i] = pharox.Proxy{PoolID: pool.ID, Host: fmt.Sprintf("10.1.0.%d", i+1), Port: 80, Protocol: pharox.ProtocolHTTP}
	}
	proxies, err := store.AddProxies(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	// Checked before the sweep: does not count.
	if _, err := store.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{
		ProxyID: proxies[0].ID, Status: pharox.StatusActive, CheckedAt: time.Now().Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	rec := ui.NewRecorder(10, time.Second)
	done := rec.SweepStarted("p")
	for _, p := range proxies[1:] {
		if _, err := store.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{
			ProxyID: p.ID, Status: pharox.StatusSlow, CheckedAt: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := rec.Collect(ctx, store); err != nil {
		t.Fatal(err)
	}
	d, err := ui.Build(ctx, store, rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Pools) != 1 || d.Pools[0].Pool.Name != "p" || d.Pools[0].Stats.TotalProxies != 3 {
		t.Fatalf("pools = %+v", d.Pools)
	}
	if len(d.Sweeps) != 1 || !d.Sweeps[0].Running || d.Sweeps[0].Total != 3 || d.Sweeps[0].Probed != 2 {
		t.Fatalf("sweeps = %+v, want running 2 of 3", d.Sweeps)
	}
	if len(d.Series) != 1 || d.Series[0].ByStatus["slow"] != 2 || d.Series[0].ByStatus["active"] != 1 {
		t.Fatalf("series = %+v", d.Series)
	}
	done(api.SweepResult{Pool: "p", Checked: 3}, "")
	// A deleted pool's last sweep is forgotten.
	if err := store.DeletePool(ctx, pool.ID); err != nil {
		t.Fatal(err)
	}
	if d, err = ui.Build(ctx, store, rec); err != nil {
		t.Fatal(err)
	}
	if len(d.Pools) != 0 || len(d.Sweeps) != 0 {
		t.Fatalf("after delete: pools %+v sweeps %+v", d.Pools, d.Sweeps)
	}
}

// TestDashboardEndpoint checks the admin endpoint and the mount through
// the real server: keys, roles, no secrets, and the counters the charts
// read.
func TestDashboardEndpoint(t *testing.T) {
	ctx := context.Background()
	store := testfactory.Memory(t)
	defer store.Close()
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: "alpha"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.2.0.1", Port: 80,
		Protocol: pharox.ProtocolHTTP, Credentials: &pharox.Credentials{User: "u", Password: proxyPassword}}}); err != nil {
		t.Fatal(err)
	}
	srv := server.New(pharox.NewManager(store), server.Options{
		AdminKeys: []string{adminKey}, ConsumerKeys: []string{consumerKey},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ts := httptest.NewServer(srv)
	defer ts.Close()
	f := &fixture{url: ts.URL}

	for key, want := range map[string]int{"": 401, "wrong": 401, consumerKey: 403, adminKey: 200} {
		if got := f.call(t, key, "GET", "/v1/admin/dashboard", "", nil); got != want {
			t.Errorf("dashboard with key %q: %d, want %d", key[:min(len(key), 4)], got, want)
		}
	}
	if st := f.call(t, consumerKey, "POST", "/v1/leases/", `{"pool_name":"alpha"}`, nil); st != 201 {
		t.Fatalf("acquire: %d", st)
	}
	if st := f.call(t, consumerKey, "POST", "/v1/leases/", `{"pool_name":"alpha"}`, nil); st != 201 {
		t.Fatalf("second acquire of an unlimited proxy: %d", st)
	}
	if st := f.call(t, consumerKey, "POST", "/v1/leases/", `{"pool_name":"alpha","filters":{"country":"ZZ"}}`, nil); st != 409 {
		t.Fatalf("acquire with no match: %d", st)
	}
	if st := f.call(t, consumerKey, "POST", "/v1/leases/", `{"pool_name":"nope"}`, nil); st != 404 {
		t.Fatalf("acquire from a missing pool: %d", st)
	}

	req, _ := http.NewRequest("GET", ts.URL+"/v1/admin/dashboard", nil)
	req.Header.Set("X-API-Key", adminKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if strings.Contains(string(raw), proxyPassword) {
		t.Error("the dashboard answer holds a proxy password")
	}
	var d ui.Dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	if d.AcquiredTotal != 2 || d.NoProxyTotal != 1 {
		t.Errorf("totals %d acquired / %d no proxy, want 2/1", d.AcquiredTotal, d.NoProxyTotal)
	}
	if len(d.Pools) != 1 || d.Pools[0].Stats.TotalLeases != 2 || d.SampleIntervalSeconds != server.DefaultUISampleInterval.Seconds() ||
		d.SweepEnabled {
		t.Errorf("dashboard = %s", raw)
	}

	// The static files need no key; the bare path redirects.
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for path, want := range map[string]int{"/ui/": 200, "/ui/app.js": 200, "/ui": 301} {
		res, err := noRedirect.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, res.StatusCode, want)
		}
	}
	// The endpoint is in the OpenAPI document with its role.
	res, err = http.Get(ts.URL + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]struct {
			Role string `json:"x-pharox-role"`
		} `json:"paths"`
	}
	err = json.NewDecoder(res.Body).Decode(&doc)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if op, ok := doc.Paths["/v1/admin/dashboard"]["get"]; !ok || op.Role != "admin" {
		t.Errorf("OpenAPI document: /v1/admin/dashboard = %+v, %v", op, ok)
	}
}

func TestCountAcquireIgnoresOtherErrors(t *testing.T) {
	r := ui.NewRecorder(1, 0)
	r.CountAcquire(errors.New("boom"))
	r.CountAcquire(fmt.Errorf("wait: %w", errors.Join(pharox.ErrNoProxyAvailable, context.DeadlineExceeded)))
	if acq, miss := r.Totals(); acq != 0 || miss != 1 {
		t.Errorf("totals %d/%d, want 0/1", acq, miss)
	}
}
