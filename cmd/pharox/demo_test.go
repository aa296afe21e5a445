package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

func TestRunDemo(t *testing.T) {
	var out, progress bytes.Buffer
	cfg := demoConfig{Workers: 8, Duration: 400 * time.Millisecond, Proxies: 12, Hold: 2 * time.Millisecond, Progress: 100 * time.Millisecond}
	res, err := runDemo(context.Background(), &out, &progress, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Acquired == 0 {
		t.Fatal("no lease was acquired")
	}
	if len(res.OverLeased) > 0 {
		t.Fatalf("over-leased: %v", res.OverLeased)
	}
	for _, p := range res.Proxies {
		if p.Proxy.MaxConcurrency != nil && int(p.Peak) > *p.Proxy.MaxConcurrency {
			t.Fatalf("proxy %s peaked at %d holders, max %d", p.Proxy, p.Peak, *p.Proxy.MaxConcurrency)
		}
	}
	var total int64
	for _, p := range res.Proxies {
		total += p.Leases
	}
	if total != res.Acquired {
		t.Fatalf("per-proxy leases add up to %d, acquisitions %d", total, res.Acquired)
	}
	st := res.Stats
	if st == nil || st.PoolName != demoPool || st.TotalProxies != 12 {
		t.Fatalf("stats = %+v, want the 12-proxy demo pool", st)
	}
	if st.TotalLeases != 0 || st.LeasedProxies != 0 {
		t.Fatalf("leases left after the demo: %+v", st)
	}

	text := out.String()
	for _, want := range []string{"acquisitions:", "over-leases:  none", "POOL", "PROXY", "198.18.0."} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	// Not a terminal: plain progress lines, no carriage returns.
	lines := strings.Split(strings.TrimSpace(progress.String()), "\n")
	if len(lines) < 2 || strings.Contains(progress.String(), "\r") {
		t.Fatalf("progress = %q, want plain lines", progress.String())
	}
	if !strings.Contains(lines[len(lines)-1], "active leases 0") {
		t.Errorf("last progress line %q should show no active lease", lines[len(lines)-1])
	}
}

func TestDemoCommand(t *testing.T) {
	cmd := newDemoCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"--workers", "3", "--duration", "150ms", "--proxies", "30", "--hold", "1ms"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "pharox demo: 3 workers, 30 proxies") || !strings.Contains(out.String(), "(busiest 10 of 30 proxies)") {
		t.Fatalf("output:\n%s", out.String())
	}
	if !strings.Contains(errOut.String(), "acquired") {
		t.Fatalf("no progress on stderr: %q", errOut.String())
	}

	for _, args := range [][]string{{"--workers", "0"}, {"--duration", "-1s"}, {"--proxies", "0"}} {
		cmd := newDemoCmd()
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		cmd.SetArgs(args)
		if err := cmd.ExecuteContext(context.Background()); !errors.Is(err, pharox.ErrInvalidArgument) {
			t.Errorf("demo %v: err = %v, want ErrInvalidArgument", args, err)
		}
	}
}

func TestDemoStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	// A run of an hour that ignored ctx would hit the test timeout.
	res, err := runDemo(ctx, &bytes.Buffer{}, &bytes.Buffer{}, demoConfig{Workers: 4, Duration: time.Hour, Proxies: 5, Hold: time.Millisecond, Progress: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stats.TotalLeases != 0 {
		t.Fatalf("%d leases left after cancellation", res.Stats.TotalLeases)
	}
}
