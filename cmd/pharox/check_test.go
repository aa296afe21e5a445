package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/health"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/storage/memory"
)

// checkNopClose keeps the test's store usable after the command closes it.
type checkNopClose struct{ pharox.Storage }

func (checkNopClose) Close() error { return nil }

// checkFixture is a memory store with pool "edge": two working HTTP proxies
// (a real goproxy) and one on a closed port, plus a local target.
func checkFixture(t *testing.T) (store *memory.Store, target string) {
	t.Helper()
	tgt := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(tgt.Close)
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = log.New(io.Discard, "", 0)
	px := httptest.NewServer(gp)
	t.Cleanup(px.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	good := px.Listener.Addr().(*net.TCPAddr).Port

	ctx := context.Background()
	store = testfactory.Memory(t)
	pool, err := store.CreatePool(ctx, pharox.Pool{Name: "edge"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = store.AddProxies(ctx, []pharox.Proxy{
		{PoolID: pool.ID, Host: "127.0.0.1", Port: good, Protocol: pharox.ProtocolHTTP},
		{PoolID: pool.ID, Host: "127.0.0.1", Port: good, Protocol: pharox.ProtocolHTTP, Credentials: &pharox.Credentials{User: "bob", Password: "hunter2-secret"}},
		{PoolID: pool.ID, Host: "127.0.0.1", Port: closed, Protocol: pharox.ProtocolSOCKS5},
	})
	if err != nil {
		t.Fatal(err)
	}
	orig := checkOpenStorage
	checkOpenStorage = func(_ context.Context, url string) (pharox.Storage, error) {
		if url != "memory://test" {
			t.Errorf("storage URL = %q", url)
		}
		return checkNopClose{store}, nil
	}
	t.Cleanup(func() { checkOpenStorage = orig })
	return store, tgt.URL
}

func runCheckCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newCheckCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func TestCheckCommandTable(t *testing.T) {
	store, target := checkFixture(t)
	stdout, stderr, err := runCheckCmd(t, "--storage", "memory://test", "--pool", "edge", "--target", target,
		"--concurrency", "3", "--timeout", "5s", "--failure-threshold", "1")
	if err != nil {
		t.Fatalf("check: %v\nstderr: %s", err, stderr)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(stdout, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			rows[f[0]] = f
		}
	}
	for status, want := range map[string]string{"active": "2", "slow": "0", "inactive": "1", "banned": "0"} {
		if r := rows[status]; len(r) < 3 || r[1] != want || r[2] != want {
			t.Errorf("status row %q = %v, want %s stored and found", status, r, want)
		}
	}
	if r := rows["refused"]; len(r) < 2 || r[1] != "1" {
		t.Errorf("failure row refused = %v", r)
	}
	if !strings.Contains(stdout, "FAILING") || !strings.Contains(stdout, "socks5://127.0.0.1:") || !strings.Contains(stdout, "SLOWEST") {
		t.Errorf("summary lacks the proxy lists:\n%s", stdout)
	}
	if !strings.Contains(stdout, "P50") || !strings.Contains(stdout, "healthy (2)") {
		t.Errorf("summary lacks latency percentiles:\n%s", stdout)
	}
	if strings.Contains(stdout, "hunter2-secret") || strings.Contains(stderr, "hunter2-secret") {
		t.Errorf("output leaks a proxy password")
	}
	// stderr is not a terminal here: plain progress lines, the last complete.
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "3/3 100%") || strings.Contains(stderr, "\r") {
		t.Errorf("progress output = %q", stderr)
	}

	pool, _ := store.GetPoolByName(context.Background(), "edge")
	stats, err := store.GetPoolStats(context.Background(), pool.Name)
	if err != nil {
		t.Fatal(err)
	}
	if stats.ByStatus[pharox.StatusInactive] != 1 || stats.ActiveProxies != 2 {
		t.Errorf("stored statuses after check: %+v", stats.ByStatus)
	}
}

func TestCheckCommandJSON(t *testing.T) {
	_, target := checkFixture(t)
	stdout, _, err := runCheckCmd(t, "--storage", "memory://test", "--all", "--target", target, "--json", "--top", "1")
	if err != nil {
		t.Fatal(err)
	}
	var s health.SweepSummary
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, stdout)
	}
	// Default failure threshold 3: one failed probe does not mark it yet.
	if s.Checked != 3 || s.ByStatus[pharox.StatusActive] != 3 || s.Observed[pharox.StatusInactive] != 1 ||
		len(s.Failing) != 1 || s.Failing[0].ErrorKind != health.KindRefused || len(s.Slowest) != 1 {
		t.Fatalf("summary = %+v", s)
	}
}

func TestCheckCommandErrors(t *testing.T) {
	_, target := checkFixture(t)
	cases := []struct {
		args []string
		want error
	}{
		{[]string{"--storage", "memory://test", "--pool", "edge"}, pharox.ErrInvalidArgument},
		{[]string{"--storage", "memory://test", "--target", target}, pharox.ErrInvalidArgument},
		{[]string{"--storage", "memory://test", "--pool", "edge", "--all", "--target", target}, pharox.ErrInvalidArgument},
		{[]string{"--storage", "memory://test", "--pool", "edge", "--target", target, "--concurrency", "0"}, pharox.ErrInvalidArgument},
		{[]string{"--storage", "memory://test", "--pool", "edge", "--target", "ftp://x/"}, pharox.ErrInvalidArgument},
		{[]string{"--storage", "memory://test", "--pool", "edge", "--target", target, "--header", "nocolon"}, pharox.ErrInvalidArgument},
		{[]string{"--storage", "memory://test", "--pool", "nope", "--target", target}, pharox.ErrPoolNotFound},
		{[]string{"--storage", "memory://test", "--pool", "edge", "--target", "http://127.0.0.1:1/"}, health.ErrTargetUnreachable},
	}
	for _, tc := range cases {
		if _, _, err := runCheckCmd(t, tc.args...); !errors.Is(err, tc.want) {
			t.Errorf("check %v = %v, want %v", tc.args, err, tc.want)
		}
	}
}

func TestProgressLine(t *testing.T) {
	cases := []struct {
		p    health.Progress
		want string
	}{
		{health.Progress{Total: 2000, Done: 500, Failed: 7, Elapsed: 10 * time.Second}, "[#######.......................]  500/2000  25%  failing 7  50.0/s  eta 30s"},
		{health.Progress{Total: 4, Done: 4, Skipped: 1, Elapsed: time.Second}, "[##############################] 4/4 100%  failing 0  resting 1  4.0/s"},
		{health.Progress{}, "[##############################] 0/0 100%  failing 0"},
	}
	for _, tc := range cases {
		if got := progressLine(tc.p, 30); got != tc.want {
			t.Errorf("progressLine(%+v)\n got %q\nwant %q", tc.p, got, tc.want)
		}
	}
	var buf bytes.Buffer
	b := newProgressBar(&buf, time.Hour)
	for i := 1; i <= 10; i++ {
		b.update(health.Progress{Total: 10, Done: i})
	}
	b.finish()
	// Not a terminal: the first update and the final one only, an hour apart.
	if got := strings.Count(buf.String(), "\n"); got != 2 || !strings.Contains(buf.String(), "10/10") {
		t.Errorf("progress lines = %q", buf.String())
	}
}
