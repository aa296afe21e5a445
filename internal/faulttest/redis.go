package faulttest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Redis is a redis-server of the test's own.
type Redis struct {
	t    testing.TB
	bin  string
	dir  string
	conf string
	// Port is the TCP port it listens on, on 127.0.0.1.
	Port int
	// args follow the configuration file on the command line.
	args []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartRedis starts redis-server on a free port with its data in a
// temporary directory, with the given configuration directives (one per
// element, as in redis.conf, e.g. "appendonly yes"), and stops it when t
// ends.
func StartRedis(t testing.TB, directives ...string) *Redis {
	t.Helper()
	return startRedis(t, nil, append([]string{"save \"\""}, directives...))
}

// StartSentinel starts a Redis Sentinel on a free port that monitors the
// primary at 127.0.0.1:primaryPort under name, with a quorum of quorum
// and a primary considered down after downAfter without an answer.
func StartSentinel(t testing.TB, name string, primaryPort, quorum int, downAfter time.Duration) *Redis {
	t.Helper()
	return startRedis(t, []string{"--sentinel"}, []string{
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d %d", name, primaryPort, quorum),
		fmt.Sprintf("sentinel down-after-milliseconds %s %d", name, downAfter.Milliseconds()),
		fmt.Sprintf("sentinel failover-timeout %s %d", name, (10 * time.Second).Milliseconds()),
		"sentinel resolve-hostnames no",
	})
}

func startRedis(t testing.TB, args, directives []string) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not on PATH: skipping a test that needs a Redis server of its own")
	}
	r := &Redis{t: t, bin: bin, Port: FreePort(t), args: args}
	r.dir = t.TempDir()
	conf := []string{
		"bind 127.0.0.1",
		"port " + strconv.Itoa(r.Port),
		"dir " + r.dir,
		"logfile " + filepath.Join(r.dir, "redis.log"),
		"protected-mode no",
	}
	conf = append(conf, directives...)
	r.conf = filepath.Join(r.dir, "redis.conf")
	if err := os.WriteFile(r.conf, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		t.Fatalf("faulttest: write redis.conf: %v", err)
	}
	t.Cleanup(r.Kill)
	r.Start()
	return r
}

// Start starts the stopped server and waits until it answers PING with
// PONG (not LOADING).
func (r *Redis) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	cmd := exec.Command(r.bin, append([]string{r.conf}, r.args...)...)
	cmd.Dir = r.dir
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("faulttest: start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	r.cmd, r.done = cmd, done
	deadline := time.Now().Add(commandTimeout)
	for {
		if reply, err := r.Command("PING"); err == nil && reply == "+PONG" {
			return
		}
		select {
		case <-done:
			r.t.Fatalf("faulttest: redis-server exited at start\n%s", r.Log())
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("faulttest: redis-server did not answer within %v\n%s", commandTimeout, r.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill ends the server with SIGKILL, as a crash would, and waits for it.
func (r *Redis) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

// URL is the server's URL for database 0.
func (r *Redis) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.Port) }

// Log returns the server's log so far.
func (r *Redis) Log() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	return string(b)
}

// Command sends one command in the inline protocol and returns the first
// line of the reply, for administrative commands (PING, CLIENT KILL,
// CONFIG SET) that need no client library.
func (r *Redis) Command(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port)))
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}
