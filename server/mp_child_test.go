package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/server/servertest"
	"github.com/pharox/pharox/storage/open"
)

// A multi-process test re-executes its own test binary, running only
// itself, as server processes. The environment tells the copy that it is
// a server and which store to serve.
const (
	// mpEnvChild holds the name of the test the child serves for; its
	// presence marks a child.
	mpEnvChild = "PHAROX_SERVER_MP_CHILD"
	// mpEnvStore holds the storage URL (open.Open) the child serves.
	mpEnvStore = "PHAROX_SERVER_MP_STORE"
)

// mpURLPrefix starts the stdout line on which a child announces its URL.
const mpURLPrefix = "PHAROX-SERVER-MP-URL "

// mpReapInterval is the children's reaper period: short, so that both
// processes reclaim expired leases while clients acquire.
const mpReapInterval = 250 * time.Millisecond

// mpServeIfChild serves as a child server process and reports true when
// this process is one; the test must then return. A child serves the store
// named in its environment on 127.0.0.1:0 until its stdin closes or it is
// signalled.
func mpServeIfChild(t *testing.T) bool {
	name := os.Getenv(mpEnvChild)
	if name == "" {
		return false
	}
	if name != t.Name() {
		t.Skipf("server child for %s, not %s", name, t.Name())
	}
	mpServe(t, os.Getenv(mpEnvStore))
	return true
}

func mpServe(t *testing.T, storeURL string) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The parent closes our stdin to stop us; it also closes if the parent
	// dies, so no child outlives its test.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	openCtx, cancel := context.WithTimeout(ctx, time.Minute)
	s, err := open.Open(openCtx, storeURL)
	cancel()
	if err != nil {
		t.Fatalf("server child: open %s: %v", open.Redact(storeURL), err)
	}
	defer s.Close()
	// Warnings and errors go to stderr, which the parent shows on failure.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv := server.New(pharox.NewManager(s, pharox.WithLogger(logger)), server.Options{
		AdminKeys:      []string{servertest.AdminKey},
		ConsumerKeys:   []string{servertest.ConsumerKey},
		Logger:         logger,
		ReapInterval:   mpReapInterval,
		LeaseRetention: -1, // the parent audits every lease record
	})
	err = srv.ListenAndServe(ctx, "127.0.0.1:0", func(a net.Addr) {
		// Printed, not logged: the parent reads stdout.
		fmt.Printf("\n%shttp://%s\n", mpURLPrefix, a)
	})
	if err != nil {
		t.Fatalf("server child: %v", err)
	}
}

// mpChild is a running child server process.
type mpChild struct {
	name   string
	URL    string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *testpeers.OutputWatcher
	stderr *servertest.SyncBuffer
	done   chan struct{} // closed when the process has been waited for
	err    error         // Wait's result, once done is closed
}

// mpRunPattern selects exactly the test named name.
func mpRunPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// mpStartChild starts a server process over storeURL and waits for its
// URL. The process is killed when t ends if it is still running.
func mpStartChild(t *testing.T, name, storeURL string) *mpChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run="+mpRunPattern(t.Name()), "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), mpEnvChild+"="+t.Name(), mpEnvStore+"="+storeURL)
	c := &mpChild{
		name:   name,
		cmd:    cmd,
		stdout: testpeers.NewOutputWatcher(mpURLPrefix),
		stderr: &servertest.SyncBuffer{},
		done:   make(chan struct{}),
	}
	cmd.Stdout, cmd.Stderr = c.stdout, c.stderr
	// Bounds Wait should the process leave its output pipes to a
	// descendant.
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("%s: stdin pipe: %v", name, err)
	}
	c.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: start: %v", name, err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(c.kill)

	select {
	case u := <-c.stdout.Found():
		c.URL = u
	case <-c.done:
		t.Fatalf("%s exited before serving: %v\n%s", name, c.err, c.output())
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s did not announce its URL within 2 minutes\n%s", name, c.output())
	}
	return c
}

// Stop closes the child's stdin, which shuts it down gracefully, and
// reports an error unless it exits cleanly in time.
func (c *mpChild) Stop() error {
	_ = c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(time.Minute):
		c.kill()
		return fmt.Errorf("%s did not stop within a minute of its stdin closing; killed\n%s", c.name, c.output())
	}
	if c.err != nil {
		return fmt.Errorf("%s exited with %v\n%s", c.name, c.err, c.output())
	}
	return nil
}

// kill ends the process unless it has already exited, and waits for it.
func (c *mpChild) kill() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Kill()
	<-c.done
}

func (c *mpChild) output() string {
	return "stdout:\n" + mpTail(c.stdout.String()) + "\nstderr:\n" + mpTail(c.stderr.String())
}

func mpTail(s string) string {
	const max = 4000
	if len(s) > max {
		return "..." + s[len(s)-max:]
	}
	return s
}
