package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Read-only commands on a SQLite path that does not exist used to create
// an empty database and print an empty answer; they refuse it now and
// leave no file behind. The commands that add data still create it, 0600.
func TestReadOnlyCommandsRefuseMissingSQLite(t *testing.T) {
	t.Setenv(envServer, "")
	t.Setenv(envStorage, "")
	dir := t.TempDir()
	missing := filepath.Join(dir, "nonexistent.db")
	url := "sqlite://" + missing
	for _, args := range [][]string{
		{"stats"}, {"pool", "list"}, {"pool", "delete", "main"}, {"lease", "list"},
		{"proxy", "list", "--pool", "main"}, {"lease", "acquire", "--pool", "main"},
	} {
		_, _, err := runArgs("", append(args, "--storage", url)...)
		if err == nil || !strings.Contains(err.Error(), "no SQLite database at "+missing) {
			t.Errorf("pharox %s on a missing file: %v, want a refusal naming it", strings.Join(args, " "), err)
		}
		if _, err := os.Stat(missing); err == nil {
			t.Fatalf("pharox %s created %s", strings.Join(args, " "), missing)
		}
	}
	_, _, err := runCheckCmd(t, "--storage", url, "--pool", "main", "--target", "http://127.0.0.1:1/")
	if err == nil || !strings.Contains(err.Error(), "no SQLite database") {
		t.Errorf("check on a missing file: %v", err)
	}
	o := baseGatewayOptions()
	o.storage = url
	if err := runGateway(context.Background(), o, io.Discard, nil); err == nil || !strings.Contains(err.Error(), "no SQLite database") {
		t.Errorf("gateway on a missing file: %v", err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatalf("check or gateway created %s", missing)
	}

	if _, stderr, err := runArgs("", "pool", "create", "main", "--storage", url); err != nil {
		t.Fatalf("pool create on a new file: %v %s", err, stderr)
	}
	fi, err := os.Stat(missing)
	if err != nil {
		t.Fatalf("pool create made no database: %v", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Fatalf("database created with mode %o, want 600 (it holds proxy passwords)", mode)
	}
	if out, _, err := runArgs("", "pool", "list", "--storage", url); err != nil || !strings.Contains(out, "main") {
		t.Fatalf("pool list on the created file: %q %v", out, err)
	}
}

// serve with no admin key used to generate a new one on every start, so
// anything configured with it broke at the next restart. It keeps the
// first one beside the SQLite database, mode 0600, and says where.
func TestServeKeepsGeneratedAdminKey(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "pharox.db")
	cfg := serveConfig{Listen: "127.0.0.1:0", Storage: "sqlite://" + db,
		ReapInterval: serveDuration{time.Second}, MaxWait: serveDuration{5 * time.Second}, LogFormat: "json", LogLevel: "info"}
	start := func() (stdout string, status func(key string) int) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		var out, errOut serveOutput
		addrc := make(chan net.Addr, 1)
		done := make(chan error, 1)
		go func() { done <- runServe(ctx, cfg, &out, &errOut, func(a net.Addr) { addrc <- a }) }()
		var addr net.Addr
		select {
		case addr = <-addrc:
		case err := <-done:
			cancel()
			t.Fatalf("serve ended early: %v", err)
		}
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
		return out.String(), func(key string) int {
			req, _ := http.NewRequest("GET", "http://"+addr.String()+"/v1/pools/", nil)
			req.Header.Set("X-API-Key", key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
	}
	keyRE := regexp.MustCompile(`phx_[A-Za-z0-9_-]{43}`)
	out, status := start()
	key := keyRE.FindString(out)
	keyFile := db + ".admin-key"
	if key == "" || !strings.Contains(out, keyFile) {
		t.Fatalf("first start does not print the key and where it is kept:\n%s", out)
	}
	if s := status(key); s != 200 {
		t.Fatalf("generated key: %d", s)
	}
	for _, f := range []string{keyFile, db} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode != 0o600 {
			t.Fatalf("%s has mode %o, want 600", f, mode)
		}
	}
	// A second serve over the same database (the restart) uses the same key.
	out2, status2 := start()
	if !strings.Contains(out2, keyFile) || keyRE.MatchString(out2) {
		t.Fatalf("restart does not say where the key is, or prints it again:\n%s", out2)
	}
	if s := status2(key); s != 200 {
		t.Fatalf("the first key after a restart: %d, want 200", s)
	}
}
