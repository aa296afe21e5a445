package server_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/open"
)

// TestPythonClientFlow runs testdata/python_client_flow.py, a Python
// client written only from the wire contract (standard library only),
// against a server on a real listener over SQLite, the store `pharox
// serve` uses by default. It proves with a real Python that the answers
// parse there (datetime.fromisoformat included). Skipped without python3.
func TestPythonClientFlow(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed: skipping the Python client flow")
	}
	path := filepath.Join(t.TempDir(), "pharox.db")
	store, err := open.Open(backendOpenContext(t), "sqlite://"+path)
	if err != nil {
		t.Fatalf("open sqlite %s: %v", path, err)
	}
	t.Cleanup(func() { _ = store.Close() })
	srv := server.New(pharox.NewManager(store), server.Options{
		AdminKeys: []string{servertest.AdminKey}, ConsumerKeys: []string{servertest.ConsumerKey},
		Logger: slog.New(slog.DiscardHandler),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	runCtx, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	cmd := exec.CommandContext(runCtx, python, filepath.Join("testdata", "python_client_flow.py"),
		"http://"+ln.Addr().String(), servertest.AdminKey, servertest.ConsumerKey)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		t.Fatalf("the Python client failed (exit %d):\n%s", exit.ExitCode(), out)
	case err != nil:
		t.Fatalf("run %s: %v\n%s", python, err, out)
	}
	t.Logf("%s", out)
}
