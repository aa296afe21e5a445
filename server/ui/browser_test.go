package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/storage/memory"
)

const (
	adminKey    = "phx_admin_test_key_0123456789"
	consumerKey = "phx_consumer_test_key_9876543210"
	// proxyPassword must never reach the page.
	proxyPassword = "hunter2-proxy-secret"
	// xssError is a health error that would run script if it were
	// rendered as HTML.
	xssError = `<img src=x onerror="window.__xss=1">timeout`
)

// chromePath finds the browser: $PHAROX_TEST_CHROME, else the Debian
// chromium package's binary. Without one the test is skipped, or fails
// when $PHAROX_REQUIRE_BROWSER is set (CI sets it, so that a missing
// browser cannot pass as a skipped test).
func chromePath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PHAROX_TEST_CHROME"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("PHAROX_TEST_CHROME=%s: %v", p, err)
		}
		return p
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	msg := "no browser: install Chromium (apt-get install -y chromium) or set PHAROX_TEST_CHROME to its path"
	if os.Getenv("PHAROX_REQUIRE_BROWSER") != "" {
		t.Fatal(msg + " (PHAROX_REQUIRE_BROWSER is set)")
	}
	t.Skip(msg)
	return ""
}

// artifactsDir is where screenshots go: $PHAROX_ARTIFACTS_DIR/ui when
// set, else a temporary directory.
func artifactsDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("PHAROX_ARTIFACTS_DIR"); d != "" {
		dir := filepath.Join(d, "ui")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	return t.TempDir()
}

// fixture is a server over a memory store with one pool of proxies, and
// a health sweep that the test releases by hand.
type fixture struct {
	store   *memory.Store
	mgr     *pharox.Manager
	url     string
	pool    *pharox.Pool
	proxies []*pharox.Proxy // host order: 10.0.0.1 .. 10.0.0.4

	sweepStarted chan string
	sweepRelease chan struct{}
	sweepTargets chan string // the target each sweep was asked to request
}

// newFixture builds the fixture; healthTarget is the service's default
// health target ("" for none, so the dashboard must ask for one).
func newFixture(t *testing.T, healthTarget string) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{store: testfactory.Memory(t), sweepStarted: make(chan string, 4), sweepRelease: make(chan struct{}), sweepTargets: make(chan string, 4)}
	t.Cleanup(func() { _ = f.store.Close() })
	f.mgr = pharox.NewManager(f.store)

	var err error
	if f.pool, err = f.store.CreatePool(ctx, pharox.Pool{Name: "alpha", Description: "test pool"}); err != nil {
		t.Fatal(err)
	}
	if _, err = f.store.CreatePool(ctx, pharox.Pool{Name: "beta"}); err != nil {
		t.Fatal(err)
	}
	one := 1
	in := []pharox.Proxy{
		{Host: "10.0.0.1", Port: 8080, Country: "DE", MaxConcurrency: &one},
		{Host: "10.0.0.2", Port: 8080, Country: "DE", Credentials: &pharox.Credentials{User: "bob", Password: proxyPassword}},
		{Host: "10.0.0.3", Port: 3128, Country: "US"},
		{Host: "10.0.0.4", Port: 3128, Country: "US", Status: pharox.StatusSlow},
	}
	for i := range in {
		in[i].PoolID = f.pool.ID
		in[i].Protocol = pharox.ProtocolHTTP
		in[i].Normalize()
	}
	if f.proxies, err = f.store.AddProxies(ctx, in); err != nil {
		t.Fatal(err)
	}
	// The third proxy failed a health check with a hostile error text.
	if _, err = f.store.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{
		ProxyID: f.proxies[2].ID, Status: pharox.StatusBanned, Latency: 1500 * time.Millisecond,
		StatusCode: 403, CheckedAt: time.Now().UTC(), Error: xssError, FailureThreshold: 1,
	}); err != nil {
		t.Fatal(err)
	}

	sweep := func(ctx context.Context, pool, target string) (api.SweepResult, error) {
		select {
		case f.sweepTargets <- target:
		default: // nobody is counting this test's sweeps
		}
		// Probe the first proxy at once, so the page can show progress,
		// then wait for the test before the rest.
		if _, err := f.store.ApplyHealthCheckResult(ctx, pharox.HealthCheckResult{
			ProxyID: f.proxies[0].ID, Status: pharox.StatusActive, Latency: 120 * time.Millisecond,
			StatusCode: 200, CheckedAt: time.Now().UTC(),
		}); err != nil {
			return api.SweepResult{}, err
		}
		f.sweepStarted <- pool
		select {
		case <-f.sweepRelease:
		case <-ctx.Done():
			return api.SweepResult{}, ctx.Err()
		}
		return api.SweepResult{Pool: pool, Checked: 4, ByStatus: map[string]int{"active": 3, "banned": 1}, DurationMS: 5}, nil
	}
	srv := server.New(f.mgr, server.Options{
		AdminKeys: []string{adminKey}, ConsumerKeys: []string{consumerKey},
		Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		Sweep:            sweep,
		HealthTarget:     healthTarget,
		UISampleInterval: 100 * time.Millisecond,
	})
	ts := httptest.NewServer(srv)
	bg, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { srv.RunBackground(bg) })
	t.Cleanup(func() {
		stop()
		wg.Wait()
		srv.Close()
		ts.Close()
	})
	f.url = ts.URL
	return f
}

// call sends an API request with key and decodes the answer into out.
func (f *fixture) call(t *testing.T, key, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", key)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil && res.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
	return res.StatusCode
}

// browser is one headless Chromium tab and what its console said.
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string

	mu       sync.Mutex
	messages []chromedp.ConsoleMessage
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromePath(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1366, 768),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	b := &browser{t: t, ctx: ctx, dir: artifactsDir(t)}
	// Start the browser without a deadline (a deadline on the first run
	// would bound the browser's life), then listen to its console.
	watchdog := time.AfterFunc(time.Minute, cancel) // a browser that hangs at start
	err := chromedp.Do(ctx, chromedp.EmulateViewport(1366, 768))
	watchdog.Stop()
	if err != nil {
		t.Fatalf("start Chromium (%s): %v", path, err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.messages = append(b.messages, m)
			b.mu.Unlock()
		}
	}()
	return b
}

// do runs steps with a deadline.
func (b *browser) do(d time.Duration, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %v (console: %v)", err, b.console())
	}
}

// clickIn clicks the element sel finds, finding and clicking it in one
// JavaScript turn: a table the page re-renders on its refresh cannot swap
// the row out between the two, as it can between chromedp's node lookup
// and its click.
func (b *browser) clickIn(d time.Duration, sel string) {
	b.t.Helper()
	b.waitJS(d, fmt.Sprintf(`(() => { const e = document.querySelector(%q); if (!e) return false; e.click(); return true })()`, sel))
}

// eval evaluates a JavaScript expression.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS waits until expr is true in the page, for up to d.
func (b *browser) waitJS(d time.Duration, expr string) {
	b.t.Helper()
	deadline := time.Now().Add(d)
	for {
		if eval[bool](b, "!!("+expr+")") {
			return
		}
		if time.Now().After(deadline) {
			b.screenshot("timeout-" + strings.ReplaceAll(b.t.Name(), "/", "_"))
			b.t.Fatalf("page: %s still false after %v (console: %v)", expr, d, b.console())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	return eval[string](b, fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ""`, sel))
}

func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	path := filepath.Join(b.dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	b.t.Logf("screenshot: %s", path)
}

func (b *browser) console() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.messages))
	for _, m := range b.messages {
		out = append(out, m.String()+" @"+m.URL)
	}
	return out
}

// checkConsole fails on any error, warning or exception the page logged
// since the last check, except the refusals allowed, and returns how many
// refusals it saw.
func (b *browser) checkConsole(allowedStatus ...int) (allowed int) {
	b.t.Helper()
	b.mu.Lock()
	msgs := b.messages
	b.messages = nil
	b.mu.Unlock()
	for _, m := range msgs {
		if m.Type != chromedp.ConsoleError && m.Type != chromedp.ConsoleWarning && !m.IsException() {
			continue
		}
		ok := false
		for _, st := range allowedStatus {
			if m.Source == "network" && strings.Contains(m.Text, fmt.Sprintf("status of %d", st)) {
				ok = true
			}
		}
		if ok {
			allowed++
			continue
		}
		b.t.Errorf("console %s (source %q, %s:%d)", m, m.Source, m.URL, m.Line)
	}
	return allowed
}

// signIn types key on the sign-in form and submits it.
func (b *browser) signIn(key string) {
	b.t.Helper()
	b.do(10*time.Second, chromedp.WaitVisible(chromedp.CSS("#key")))
	eval[bool](b, `(document.getElementById("key").value = "") === ""`)
	b.do(10*time.Second,
		chromedp.SendKeys(chromedp.CSS("#key"), key),
		chromedp.Click(chromedp.CSS("#login-submit")),
	)
}

// confirm accepts the confirmation dialog, which must be open.
func (b *browser) confirm(shot string) {
	b.t.Helper()
	b.do(5*time.Second, chromedp.WaitVisible(chromedp.CSS("#confirm-ok")))
	if shot != "" {
		b.screenshot(shot)
	}
	b.do(5*time.Second, chromedp.Click(chromedp.CSS("#confirm-ok")))
	b.waitJS(5*time.Second, `!document.getElementById("confirm").open`)
}

func proxyRow(id uuid.UUID) string { return fmt.Sprintf(`#proxies tr[data-id="%s"]`, id) }

func TestDashboardInBrowser(t *testing.T) {
	chromePath(t) // skip before building anything
	f := newFixture(t, "http://127.0.0.1:1/probe")
	b := newBrowser(t)
	ctx := context.Background()

	t.Run("ConsumerKeyRefused", func(t *testing.T) {
		b.t = t
		b.do(15*time.Second, chromedp.Navigate(f.url+"/ui/"))
		b.signIn(consumerKey)
		b.waitJS(5*time.Second, `document.getElementById("login-error").textContent.includes("admin API key")`)
		if eval[bool](b, `!document.getElementById("app").hidden`) {
			t.Error("the dashboard opened with a consumer key")
		}
		if n := eval[int](b, `document.querySelectorAll("#pools tbody tr").length`); n != 0 {
			t.Errorf("%d pool rows rendered for a consumer key", n)
		}
		if eval[string](b, `sessionStorage.getItem("pharox.apiKey") || ""`) != "" ||
			eval[string](b, `document.getElementById("key").value`) != "" {
			t.Error("a refused key was kept")
		}
		b.screenshot("consumer-refused")
		// The browser logs the 403 answer itself; nothing else may appear.
		// Seeing it also shows that the console is really listened to.
		if n := b.checkConsole(403); n == 0 {
			t.Error("the console listener saw no 403: is it listening?")
		}
	})

	t.Run("PoolAndProxiesAppear", func(t *testing.T) {
		b.t = t
		b.signIn(adminKey)
		b.do(5*time.Second, chromedp.WaitVisible(chromedp.CSS(`#pools tr[data-name="alpha"]`)))
		b.waitJS(5*time.Second, `document.querySelectorAll("#proxies tbody tr").length === 4`)
		if got := b.text(`#pools tr[data-name="alpha"] td:nth-child(2)`); got != "4" {
			t.Errorf("alpha shows %q proxies, want 4", got)
		}
		if !eval[bool](b, `!!document.querySelector('#pools tr[data-name="beta"]')`) {
			t.Error("pool beta is missing")
		}
		for i, p := range f.proxies {
			label := b.text(proxyRow(p.ID) + " td:first-child")
			if want := fmt.Sprintf("http://%s:%d", p.Host, p.Port); label != want {
				t.Errorf("proxy %d shows %q, want %q", i, label, want)
			}
		}
		if got := b.text(proxyRow(f.proxies[2].ID) + " .badge"); got != "banned" {
			t.Errorf("banned proxy shows status %q", got)
		}
		if got := b.text(proxyRow(f.proxies[2].ID) + " .why"); got != xssError {
			t.Errorf("reason shows %q, want the error as text %q", got, xssError)
		}
		if got := b.text(proxyRow(f.proxies[2].ID) + " td:nth-child(6)"); got != "1500 ms" {
			t.Errorf("latency shows %q, want 1500 ms", got)
		}
		if eval[bool](b, `document.querySelectorAll("#proxies img").length > 0 || window.__xss === 1`) {
			t.Error("a proxy's error text was rendered as HTML")
		}
		html := eval[string](b, `document.documentElement.outerHTML`)
		for _, secret := range []string{proxyPassword, adminKey} {
			if strings.Contains(html, secret) {
				t.Errorf("the page holds a secret %q", secret[:6])
			}
		}
		if got := b.text("#live-text"); got != "live" {
			t.Errorf("live indicator says %q", got)
		}
		b.screenshot("dashboard")
		b.checkConsole()
	})

	t.Run("Filters", func(t *testing.T) {
		b.t = t
		setSelect := func(id, value string) {
			eval[bool](b, fmt.Sprintf(`(() => { const s = document.getElementById(%q); s.value = %q;
				s.dispatchEvent(new Event("change", {bubbles: true})); return s.value === %q })()`, id, value, value))
		}
		setSelect("f-status", "banned")
		b.waitJS(5*time.Second, `document.querySelectorAll("#proxies tbody tr").length === 1`)
		if !eval[bool](b, fmt.Sprintf(`!!document.querySelector('%s')`, proxyRow(f.proxies[2].ID))) {
			t.Error("status filter kept the wrong proxy")
		}
		setSelect("f-status", "")
		setSelect("f-country", "US")
		b.waitJS(5*time.Second, `document.querySelectorAll("#proxies tbody tr").length === 2`)
		setSelect("f-country", "")
		setSelect("f-pool", f.pool.ID.String())
		b.waitJS(5*time.Second, `document.querySelectorAll("#proxies tbody tr").length === 4`)
		b.waitJS(5*time.Second, `document.querySelector('#pools tr[data-name="alpha"]').classList.contains("selected")`)
		setSelect("f-pool", "")
		b.waitJS(5*time.Second, `document.querySelectorAll("#proxies tbody tr").length === 4`)
		b.checkConsole()
	})

	t.Run("SetStatusChangesStorage", func(t *testing.T) {
		b.t = t
		target := f.proxies[0]
		sel := proxyRow(target.ID) + " select"
		pick := fmt.Sprintf(`(() => { const s = document.querySelector(%q); s.value = "inactive";
			s.dispatchEvent(new Event("change", {bubbles: true})); return true })()`, sel)

		// Cancelling changes nothing.
		eval[bool](b, pick)
		b.do(5*time.Second, chromedp.WaitVisible(chromedp.CSS("#confirm-cancel")))
		b.do(5*time.Second, chromedp.Click(chromedp.CSS("#confirm-cancel")))
		b.waitJS(5*time.Second, `!document.getElementById("confirm").open`)
		if p, err := f.store.GetProxy(ctx, target.ID); err != nil || p.Status != pharox.StatusActive {
			t.Fatalf("after cancel: %v %v, want active", p.Status, err)
		}

		eval[bool](b, pick)
		b.confirm("confirm-status")
		deadline := time.Now().Add(5 * time.Second)
		for {
			p, err := f.store.GetProxy(ctx, target.ID)
			if err != nil {
				t.Fatal(err)
			}
			if p.Status == pharox.StatusInactive {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("store still has %s after the UI set inactive", p.Status)
			}
			time.Sleep(50 * time.Millisecond)
		}
		b.waitJS(5*time.Second, fmt.Sprintf(`document.querySelector('%s .badge').textContent === "inactive"`, proxyRow(target.ID)))
		// Back to active for the lease test.
		if _, err := f.store.SetProxyStatus(ctx, target.ID, pharox.StatusActive); err != nil {
			t.Fatal(err)
		}
		b.checkConsole()
	})

	var leaseID uuid.UUID
	t.Run("NewLeaseWithin2s", func(t *testing.T) {
		b.t = t
		var lease api.Lease
		if st := f.call(t, consumerKey, "POST", "/v1/leases/", `{"pool_name":"alpha","consumer_name":"crawler-7"}`, &lease); st != 201 {
			t.Fatalf("acquire: %d", st)
		}
		leaseID = lease.ID
		row := fmt.Sprintf(`#leases tr[data-id="%s"]`, lease.ID)
		// Live updates must show the lease within 2 s of its creation,
		// without a reload.
		b.waitJS(2*time.Second, fmt.Sprintf(`!!document.querySelector('%s')`, row))
		if got := b.text(row + " td:nth-child(3)"); got != "crawler-7" {
			t.Errorf("lease consumer shows %q", got)
		}
		if got := b.text(row + " td:nth-child(2)"); got != "alpha" {
			t.Errorf("lease pool shows %q", got)
		}
		if left := b.text(row + " td:nth-child(5)"); !strings.HasPrefix(left, "4m") && !strings.HasPrefix(left, "5m") {
			t.Errorf("time left %q, want about 5 minutes", left)
		}
		// A miss is charted too.
		if st := f.call(t, consumerKey, "POST", "/v1/leases/", `{"pool_name":"alpha","filters":{"country":"ZZ"}}`, nil); st != 409 {
			t.Fatalf("acquire with no match: %d, want 409", st)
		}
		b.waitJS(5*time.Second, `document.querySelector("#chart-acq .total").textContent !== "0" &&
			document.querySelector("#chart-miss .total").textContent !== "0"`)
		b.waitJS(5*time.Second, `document.querySelectorAll("#chart-acq svg rect").length > 0 &&
			document.querySelectorAll("#chart-health svg path").length > 0`)
		b.screenshot("lease")
		b.checkConsole()
	})

	t.Run("ReleaseStuckLease", func(t *testing.T) {
		b.t = t
		if leaseID == uuid.Nil {
			t.Skip("no lease from the previous step")
		}
		row := fmt.Sprintf(`#leases tr[data-id="%s"]`, leaseID)
		b.do(5*time.Second, chromedp.Click(chromedp.CSS(row+" .release-btn")))
		b.confirm("")
		deadline := time.Now().Add(5 * time.Second)
		for {
			l, err := f.store.GetLease(ctx, leaseID)
			if err != nil {
				t.Fatal(err)
			}
			if l.Status == pharox.LeaseReleased {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("lease still %s after release in the UI", l.Status)
			}
			time.Sleep(50 * time.Millisecond)
		}
		b.waitJS(5*time.Second, fmt.Sprintf(`!document.querySelector('%s')`, row))
		b.checkConsole()
	})

	t.Run("SweepWithProgress", func(t *testing.T) {
		b.t = t
		b.do(5*time.Second, chromedp.Click(chromedp.CSS(`#pools tr[data-name="alpha"] .sweep-btn`)))
		b.confirm("")
		select {
		case pool := <-f.sweepStarted:
			if pool != "alpha" {
				t.Fatalf("swept %q, want alpha", pool)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the sweep did not start")
		}
		cell := `#pools tr[data-name="alpha"] td:nth-child(7)`
		b.waitJS(5*time.Second, fmt.Sprintf(`document.querySelector('%s').textContent.includes("1/4 probed")`, cell))
		if !eval[bool](b, `document.querySelector('#pools tr[data-name="alpha"] .sweep-btn').disabled`) {
			t.Error("the sweep button stays enabled during the sweep")
		}
		b.screenshot("sweep-running")
		close(f.sweepRelease)
		b.waitJS(5*time.Second, fmt.Sprintf(`document.querySelector('%s').textContent.includes("4 checked")`, cell))
		b.waitJS(5*time.Second, `document.getElementById("toast").textContent.includes("Sweep of alpha")`)
		b.checkConsole()
	})

	t.Run("ForgetKey", func(t *testing.T) {
		b.t = t
		b.do(5*time.Second, chromedp.Click(chromedp.CSS("#signout")))
		b.waitJS(5*time.Second, `!document.getElementById("login").hidden && document.getElementById("app").hidden`)
		if eval[string](b, `sessionStorage.getItem("pharox.apiKey") || ""`) != "" {
			t.Error("the key is still stored after Forget key")
		}
		b.checkConsole()
	})
}

// TestDashboardSweepAsksForTarget checks the Sweep button of a service
// with no default health target: the dialog asks for a URL, will not go
// on without one, and the sweep requests the URL the operator typed.
func TestDashboardSweepAsksForTarget(t *testing.T) {
	chromePath(t) // skip before building anything
	f := newFixture(t, "")
	close(f.sweepRelease) // sweeps here finish at once
	b := newBrowser(t)
	b.do(15*time.Second, chromedp.Navigate(f.url+"/ui/"))
	b.signIn(adminKey)
	b.waitJS(10*time.Second, `!!document.querySelector('#pools tr[data-name="alpha"] .sweep-btn')`)

	b.do(5*time.Second, chromedp.Click(chromedp.CSS(`#pools tr[data-name="alpha"] .sweep-btn`)))
	b.do(5*time.Second, chromedp.WaitVisible(chromedp.CSS("#confirm-target")))
	if !eval[bool](b, `document.getElementById("confirm-text").textContent.includes("no default health target")`) {
		t.Errorf("the dialog does not say that the server has no default target: %q", b.text("#confirm-text"))
	}
	// Confirming with the field empty is refused by the form.
	b.do(5*time.Second, chromedp.Click(chromedp.CSS("#confirm-ok")))
	if !eval[bool](b, `document.getElementById("confirm").open`) {
		t.Fatal("the dialog closed without a target")
	}
	const target = "http://127.0.0.1:9/probe"
	b.do(5*time.Second, chromedp.SendKeys(chromedp.CSS("#confirm-target"), target))
	b.confirm("sweep-asks-target")
	select {
	case got := <-f.sweepTargets:
		if got != target {
			t.Fatalf("the sweep requested %q, want the typed %q", got, target)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the sweep did not start")
	}
	b.waitJS(5*time.Second, `document.getElementById("toast").textContent.includes("Sweep of alpha")`)
	b.checkConsole()
}

// TestDashboardShowsSiteHealth checks the Sites panel: a site that banned
// a proxy shows with its pool's proxies usable and cooling down for it.
func TestDashboardShowsSiteHealth(t *testing.T) {
	chromePath(t) // skip before building anything
	f := newFixture(t, "")
	close(f.sweepRelease)
	ctx := context.Background()
	l, err := f.mgr.Acquire(ctx, "alpha", &pharox.AcquireOptions{Target: "https://shop.example.com/"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.mgr.ReportOutcome(ctx, l, pharox.Outcome{Kind: pharox.OutcomeBanned, StatusCode: 403, Target: "shop.example.com"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.mgr.Release(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t)
	b.do(15*time.Second, chromedp.Navigate(f.url+"/ui/"))
	b.signIn(adminKey)
	row := `#targets tr[data-target="example.com"]`
	b.waitJS(10*time.Second, `!!document.querySelector('`+row+`')`)
	for sel, want := range map[string]string{
		row + " td.usable":       "2", // of the 3 leasable proxies, one cools down
		row + " td.cooling":      "1",
		row + " td.bans":         "1",
		row + " td:nth-child(2)": "alpha",
	} {
		if got := b.text(sel); got != want {
			t.Errorf("%s = %q, want %q", sel, got, want)
		}
	}
	if !eval[bool](b, `document.getElementById("targets-empty").hidden && document.getElementById("targets-unsupported").hidden`) {
		t.Error("the panel shows a site and a note that there is none")
	}
	b.screenshot("sites")
	b.checkConsole()
}

// TestDashboardShowsUsageAndQuotas checks the Traffic and Quotas panels:
// a consumer's reported bytes show as a bar of the chart, by consumer and
// by site, and a consumer's quota as a row with the bytes counted today
// against its daily limit.
func TestDashboardShowsUsageAndQuotas(t *testing.T) {
	chromePath(t) // skip before building anything
	f := newFixture(t, "")
	close(f.sweepRelease)
	ctx := context.Background()
	l, err := f.mgr.Acquire(ctx, "alpha", &pharox.AcquireOptions{Consumer: "scraper-1", Target: "https://shop.example.com/"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.mgr.ReleaseWithUsage(ctx, l.ID, pharox.Usage{Requests: 3, BytesSent: 1500, BytesReceived: 2_500_000}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.mgr.SetQuota(ctx, pharox.Quota{Subject: pharox.QuotaConsumer, SubjectID: l.ConsumerID,
		QuotaLimits: pharox.QuotaLimits{MaxConcurrentLeases: 5, BytesPerDay: 10_000_000}}); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t)
	b.do(15*time.Second, chromedp.Navigate(f.url+"/ui/"))
	b.signIn(adminKey)

	bar := fmt.Sprintf(`#usage-chart .urow[data-key="%s"]`, l.ConsumerID)
	b.waitJS(10*time.Second, `!!document.querySelector('`+bar+`')`)
	if got := b.text(bar + " .ulabel"); got != "scraper-1" {
		t.Errorf("the bar is labelled %q, want the consumer's name", got)
	}
	if got := b.text(bar + " .uval"); got != "2.50 MB" {
		t.Errorf("the bar's total reads %q, want 2.50 MB (1500 + 2500000 bytes)", got)
	}
	if !eval[bool](b, `!!document.querySelector('`+bar+` svg rect.u-sent') && !!document.querySelector('`+bar+` svg rect.u-received')`) {
		t.Error("the bar has no sent and received parts")
	}
	row := `#quotas tr[data-subject="consumer"][data-name="scraper-1"]`
	b.waitJS(5*time.Second, `!!document.querySelector('`+row+`')`)
	for sel, want := range map[string]string{
		row + " td.max-leases": "5",
		row + " td.today":      "2.50 MB / 10.0 MB",
	} {
		if got := b.text(sel); got != want {
			t.Errorf("%s = %q, want %q", sel, got, want)
		}
	}
	b.screenshot("usage")

	// By site: the lease's target is the row.
	eval[bool](b, `(() => { const s = document.getElementById("u-group"); s.value = "target"; s.dispatchEvent(new Event("change")); return true })()`)
	b.waitJS(10*time.Second, `!!document.querySelector('#usage-chart .urow[data-key="example.com"]')`)
	b.checkConsole()
}
