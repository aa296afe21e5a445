package ui_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

// TestDashboardViewerAndKeysInBrowser: a viewer key sees the whole
// dashboard without a single write control (and the API refuses its
// writes); an admin key manages stored keys on the keys page (create shows
// the secret once, rotate, revoke) and reads the audit log.
func TestDashboardViewerAndKeysInBrowser(t *testing.T) {
	chromePath(t) // skip before building anything
	f := newFixture(t, "http://127.0.0.1:1/probe")
	ctx := context.Background()
	if _, err := f.mgr.Acquire(ctx, "alpha", &pharox.AcquireOptions{Consumer: "worker"}); err != nil {
		t.Fatal(err)
	}
	var viewer api.CreatedKey
	if st := f.call(t, adminKey, "POST", "/v1/keys/", `{"name":"wall","role":"viewer"}`, &viewer); st != 201 {
		t.Fatalf("create viewer key: %d", st)
	}
	b := newBrowser(t)

	t.Run("ViewerReadOnly", func(t *testing.T) {
		b.t = t
		b.do(15*time.Second, chromedp.Navigate(f.url+"/ui/"))
		b.signIn(viewer.Secret)
		b.do(5*time.Second, chromedp.WaitVisible(chromedp.CSS(`#pools tr[data-name="alpha"]`)))
		b.waitJS(5*time.Second, `document.querySelectorAll("#proxies tbody tr").length === 4`)
		b.waitJS(5*time.Second, `document.querySelectorAll("#leases tbody tr").length === 1`)
		if got := b.text("#whoami"); !strings.Contains(got, "wall") || !strings.Contains(got, "read-only") {
			t.Errorf("header says %q, want the key's name and read-only", got)
		}
		visible := eval[int](b, `[...document.querySelectorAll(".write, #key-form, #admin-panels")]
			.filter((e) => e.offsetParent !== null || getComputedStyle(e).display !== "none" && !e.closest("[hidden]")).length`)
		if visible != 0 {
			t.Errorf("%d write controls visible to a viewer", visible)
		}
		if n := eval[int](b, `document.querySelectorAll(".sweep-btn, .set-status, .release-btn").length`); n == 0 {
			t.Error("no write control rendered at all: the check above proves nothing")
		}
		b.screenshot("viewer-read-only")
		// The API refuses the viewer's writes whatever the page shows.
		eval[bool](b, fmt.Sprintf(`(fetch("/v1/pools/", {method: "POST", headers: {"X-API-Key": %q,
			"Content-Type": "application/json"}, body: '{"name":"x"}'}).then((r) => { window.__writeStatus = r.status; }), true)`, viewer.Secret))
		b.waitJS(5*time.Second, `window.__writeStatus === 403`)
		b.checkConsole(403)
		b.do(5*time.Second, chromedp.Click(chromedp.CSS("#signout")))
	})

	var created string
	t.Run("KeysPage", func(t *testing.T) {
		b.t = t
		b.signIn(adminKey)
		b.do(5*time.Second, chromedp.WaitVisible(chromedp.CSS(`#keys tr[data-name="wall"]`)))
		if eval[bool](b, `document.body.classList.contains("readonly")`) {
			t.Fatal("the admin's page is read-only")
		}
		b.do(5*time.Second,
			chromedp.SendKeys(chromedp.CSS("#kf-name"), "scraper"),
			chromedp.SendKeys(chromedp.CSS("#kf-consumers"), "s1, s2"),
			chromedp.SendKeys(chromedp.CSS("#kf-pools"), "alpha"),
			chromedp.Click(chromedp.CSS("#kf-submit")),
		)
		b.do(5*time.Second, chromedp.WaitVisible(chromedp.CSS("#key-secret")))
		created = b.text("#key-secret-value")
		if !strings.HasPrefix(created, "phx_") {
			t.Fatalf("the created key's secret shows as %q", created)
		}
		b.waitJS(5*time.Second, `!!document.querySelector('#keys tr[data-name="scraper"]')`)
		if got := b.text(`#keys tr[data-name="scraper"] td:nth-child(4)`); got != "s1, s2" {
			t.Errorf("the new key's consumers show as %q", got)
		}
		var self api.KeySelf
		if st := f.call(t, created, "GET", "/v1/keys/self", "", &self); st != 200 || self.Name != "scraper" || self.Pools[0] != "alpha" {
			t.Fatalf("the secret shown does not work: %d %+v", st, self)
		}
		b.screenshot("keys-created")
		b.do(5*time.Second, chromedp.Click(chromedp.CSS("#key-secret-close")))
		if b.text("#key-secret-value") != "" {
			t.Error("the secret is still in the page after Done")
		}

		b.clickIn(5*time.Second, `#keys tr[data-name="scraper"] .rotate-btn`)
		b.confirm("")
		b.do(5*time.Second, chromedp.WaitVisible(chromedp.CSS("#key-secret")))
		rotated := b.text("#key-secret-value")
		if rotated == created || !strings.HasPrefix(rotated, "phx_") {
			t.Fatalf("rotation shows %q", rotated)
		}
		if st := f.call(t, created, "GET", "/v1/keys/self", "", nil); st != 401 {
			t.Errorf("the old secret answers %d after rotation, want 401", st)
		}
		b.do(5*time.Second, chromedp.Click(chromedp.CSS("#key-secret-close")))

		b.clickIn(5*time.Second, `#keys tr[data-name="scraper"] .revoke-btn`)
		b.confirm("")
		b.waitJS(5*time.Second, `document.querySelector('#keys tr[data-name="scraper"] .state').textContent === "revoked"`)
		if st := f.call(t, rotated, "GET", "/v1/keys/self", "", nil); st != 401 {
			t.Errorf("the revoked key answers %d, want 401", st)
		}
		b.waitJS(5*time.Second, `[...document.querySelectorAll("#audit tbody tr td:nth-child(3)")].map((e) => e.textContent).join(" ")
			.includes("key.revoke")`)
		actions := eval[string](b, `[...document.querySelectorAll("#audit tbody tr td:nth-child(3)")].map((e) => e.textContent).join(" ")`)
		for _, want := range []string{"key.create", "key.rotate", "key.revoke"} {
			if !strings.Contains(actions, want) {
				t.Errorf("audit panel shows %q, missing %s", actions, want)
			}
		}
		b.screenshot("keys-audit")
		b.checkConsole()
	})
}
