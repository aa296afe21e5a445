package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/storage/memory"
)

// sharedStore hands the same store to every command of a test: memory://
// lives in one process, and each command opens and closes its target.
type sharedStore struct{ *memory.Store }

func (sharedStore) Close() error { return nil }

// sharedKeyStore is a sharedStore that keeps API keys too.
type sharedKeyStore struct {
	sharedStore
	pharox.KeyStore
}

// cli runs operator commands the way main does, against one store, either
// directly (--storage) or through a real pharox server (--server).
type cli struct {
	t      *testing.T
	store  pharox.Storage
	target []string
}

// newDirectCLI runs commands in direct mode over a fresh memory store.
func newDirectCLI(t *testing.T) *cli {
	store := testfactory.Memory(t)
	t.Cleanup(func() { store.Close() })
	prev := openStorage
	openStorage = func(ctx context.Context, url string) (pharox.Storage, error) {
		if url != "memory://test" {
			return nil, errors.New("test opener: unexpected storage URL " + url)
		}
		return sharedKeyStore{sharedStore{store}, store}, nil
	}
	t.Cleanup(func() { openStorage = prev })
	return &cli{t: t, store: store, target: []string{"--storage", "memory://test"}}
}

const testAdminKey = "cli-test-admin-key-42"

// newRemoteCLI runs commands against a real server over a fresh memory
// store.
func newRemoteCLI(t *testing.T) *cli {
	store := testfactory.Memory(t)
	srv := server.New(pharox.NewManager(store), server.Options{
		AdminKeys: []string{testAdminKey}, ReapInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
		store.Close()
	})
	return &cli{t: t, store: store, target: []string{"--server", hs.URL, "--api-key", testAdminKey}}
}

// newRoot builds a fresh command tree, so no flag value leaks from one run
// into the next.
func newRoot() *cobra.Command {
	root := &cobra.Command{Use: "pharox", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newPoolCmd(), newProxyCmd(), newLeaseCmd(), newStatsCmd(), newTargetsCmd(), newKeyCmd(), newAuditCmd(),
		newUsageCmd(), newQuotaCmd())
	return root
}

// run runs one command line with the CLI's target appended.
func (c *cli) run(stdin string, args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	return runArgs(stdin, append(args, c.target...)...)
}

func runArgs(stdin string, args ...string) (string, string, error) {
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

// ok runs a command that must succeed and returns its output.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, stderr, err := c.run("", args...)
	if err != nil {
		c.t.Fatalf("pharox %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr)
	}
	return out
}

func TestTargetSelection(t *testing.T) {
	t.Setenv(envServer, "")
	t.Setenv(envStorage, "")
	t.Setenv(envAPIKey, "")
	newDirectCLI(t)

	_, _, err := runArgs("", "pool", "list")
	if err == nil || !strings.Contains(err.Error(), "--server") || !strings.Contains(err.Error(), "--storage") {
		t.Fatalf("no target: err = %v, want one naming both flags", err)
	}
	_, _, err = runArgs("", "pool", "list", "--server", "http://127.0.0.1:1", "--storage", "memory://test")
	if err == nil || !strings.Contains(err.Error(), "mutually exclusive") {
		t.Fatalf("both flags: err = %v", err)
	}

	// The environment works when no flag is given.
	t.Setenv(envStorage, "memory://test")
	if _, _, err := runArgs("", "pool", "create", "from-env"); err != nil {
		t.Fatalf("PHAROX_STORAGE: %v", err)
	}
	// Both in the environment is ambiguous.
	t.Setenv(envServer, "http://127.0.0.1:1")
	_, _, err = runArgs("", "pool", "list")
	if err == nil || !strings.Contains(err.Error(), envServer) {
		t.Fatalf("both env vars: err = %v", err)
	}
	// An explicit flag wins over the environment.
	out, _, err := runArgs("", "pool", "list", "--storage", "memory://test")
	if err != nil || !strings.Contains(out, "from-env") {
		t.Fatalf("flag over env: %q, %v", out, err)
	}
	// A bad storage URL is reported as such.
	_, _, err = runArgs("", "pool", "list", "--storage", "nonsense")
	if err == nil || !strings.Contains(err.Error(), "unexpected storage URL") {
		t.Fatalf("bad storage URL: err = %v", err)
	}
	openStorage = func(ctx context.Context, url string) (pharox.Storage, error) { return nil, errors.New("unreachable") }
	_, _, err = runArgs("", "stats", "--storage", "postgres://x")
	if err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("open failure: err = %v", err)
	}
	_, _, err = runArgs("", "pool", "list", "--server", "not a url")
	if err == nil || !strings.Contains(err.Error(), "absolute http") {
		t.Fatalf("bad server URL: err = %v", err)
	}
}

func TestRemoteAPIKeyFromEnv(t *testing.T) {
	c := newRemoteCLI(t)
	server := c.target[1]
	t.Setenv(envStorage, "")
	t.Setenv(envServer, server)
	t.Setenv(envAPIKey, "wrong-key")
	if _, _, err := runArgs("", "pool", "list"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong key from env: err = %v, want a 401", err)
	}
	t.Setenv(envAPIKey, testAdminKey)
	if _, _, err := runArgs("", "pool", "create", "k"); err != nil {
		t.Fatalf("key from env: %v", err)
	}
}

func TestCommandsRegisteredOnRoot(t *testing.T) {
	for _, path := range [][]string{
		{"pool", "create"}, {"pool", "list"}, {"pool", "delete"},
		{"proxy", "import"}, {"proxy", "list"}, {"proxy", "set-status"}, {"proxy", "delete"},
		{"lease", "acquire"}, {"lease", "release"}, {"lease", "list"}, {"stats"},
	} {
		cmd, _, err := rootCmd.Find(path)
		if err != nil || cmd.Name() != path[len(path)-1] {
			t.Errorf("pharox %s is not registered: %v", strings.Join(path, " "), err)
			continue
		}
		for _, flag := range []string{"server", "api-key", "storage", "json"} {
			if cmd.Flag(flag) == nil {
				t.Errorf("pharox %s lacks --%s", strings.Join(path, " "), flag)
			}
		}
	}
}

func TestMemoryStoreNote(t *testing.T) {
	c := newDirectCLI(t)
	_, stderr, err := c.run("", "pool", "list")
	if err != nil || !strings.Contains(stderr, "memory:// store lives only as long as this command") {
		t.Fatalf("stderr = %q, err = %v", stderr, err)
	}
}
