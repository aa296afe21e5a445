package faulttest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// EnvPostgresBin names the directory holding initdb, pg_ctl and postgres.
const EnvPostgresBin = "PHAROX_TEST_PG_BIN"

// commandTimeout bounds every pg_ctl and initdb run.
const commandTimeout = 90 * time.Second

// Postgres is a PostgreSQL cluster of the test's own.
type Postgres struct {
	t    testing.TB
	bin  string
	dir  string // owned by the user the server runs as
	data string
	// Port is the TCP port the cluster listens on, on 127.0.0.1.
	Port int
	// runAs prefixes every command when the test runs as root.
	runAs []string
	// settings are passed to postgres with -c on every start.
	settings []string

	mu      sync.Mutex
	running bool
}

// PostgresOption configures a cluster before it starts.
type PostgresOption func(*Postgres)

// WithSetting passes name=value to the server on every start, as
// postgres -c would.
func WithSetting(name, value string) PostgresOption {
	return func(p *Postgres) { p.settings = append(p.settings, name+"="+value) }
}

// postgresBin finds the PostgreSQL server binaries or skips t.
func postgresBin(t testing.TB) string {
	t.Helper()
	candidates := []string{os.Getenv(EnvPostgresBin)}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	candidates = append(candidates, "/usr/lib/postgresql/15/bin")
	for _, dir := range candidates {
		if dir == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir
		}
	}
	t.Skipf("PostgreSQL server binaries (initdb, pg_ctl) not found: set %s to their directory", EnvPostgresBin)
	return ""
}

// StartPostgres initialises a cluster in a temporary directory, starts it
// on a free port and stops it, removing the directory, when t ends.
func StartPostgres(t testing.TB, opts ...PostgresOption) *Postgres {
	t.Helper()
	p := newPostgres(t, opts...)
	p.initdb()
	p.Start()
	return p
}

func newPostgres(t testing.TB, opts ...PostgresOption) *Postgres {
	t.Helper()
	p := &Postgres{t: t, bin: postgresBin(t), Port: FreePort(t)}
	for _, o := range opts {
		o(p)
	}
	dir, err := os.MkdirTemp("", "pharox-faulttest-pg-")
	if err != nil {
		t.Fatalf("faulttest: temp dir: %v", err)
	}
	p.dir, p.data = dir, filepath.Join(dir, "data")
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			t.Skipf("faulttest: running as root and there is no postgres user to run PostgreSQL as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			t.Fatalf("faulttest: chown %s: %v", dir, err)
		}
		p.runAs = []string{"runuser", "-u", "postgres", "--"}
	}
	t.Cleanup(func() {
		p.Stop("immediate")
		os.RemoveAll(p.dir)
	})
	return p
}

func (p *Postgres) initdb() {
	p.t.Helper()
	p.run("initdb", "-D", p.data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
}

// run runs one of the cluster's binaries as the cluster's user.
func (p *Postgres) run(name string, args ...string) string {
	p.t.Helper()
	out, err := p.tryRun(name, args...)
	if err != nil {
		p.t.Fatalf("faulttest: %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (p *Postgres) tryRun(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	argv := append(append(append([]string{}, p.runAs...), filepath.Join(p.bin, name)), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = p.dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// serverOptions is what pg_ctl passes to postgres.
func (p *Postgres) serverOptions() string {
	o := []string{
		"-p", strconv.Itoa(p.Port),
		"-k", p.dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", // the machine does not crash, only the server
		"-c", "shared_buffers=16MB",
		"-c", "max_connections=50",
	}
	for _, s := range p.settings {
		o = append(o, "-c", s)
	}
	return strings.Join(o, " ")
}

// Start starts the stopped cluster and waits until it accepts connections.
func (p *Postgres) Start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.run("pg_ctl", "-D", p.data, "-l", filepath.Join(p.dir, "server.log"), "-o", p.serverOptions(), "-w", "-t", "60", "start")
	p.running = true
}

// Stop stops the cluster; mode is a pg_ctl shutdown mode: "smart", "fast"
// (roll back and disconnect every session) or "immediate" (as a crash).
func (p *Postgres) Stop(mode string) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return
	}
	if out, err := p.tryRun("pg_ctl", "-D", p.data, "-m", mode, "-w", "-t", "60", "stop"); err != nil {
		p.t.Errorf("faulttest: pg_ctl stop: %v\n%s", err, out)
	}
	p.running = false
}

// Restart stops the cluster (fast shutdown), keeps it down for down, and
// starts it again.
func (p *Postgres) Restart(down time.Duration) {
	p.t.Helper()
	p.Stop("fast")
	time.Sleep(down)
	p.Start()
}

// StartStandby makes a streaming-replication standby of the running
// cluster p (a base backup with its replication settings), starts it on a
// free port and stops it when t ends. p must run with enough WAL senders
// (PostgreSQL's default of 10 is) and trust replication connections from
// 127.0.0.1 (initdb's default pg_hba.conf does).
func (p *Postgres) StartStandby(t testing.TB, opts ...PostgresOption) *Postgres {
	t.Helper()
	s := newPostgres(t, opts...)
	s.run("pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-U", "postgres",
		"-D", s.data, "-R", "-X", "stream", "--no-sync")
	s.Start()
	return s
}

// Promote turns a standby into a primary and waits until it accepts
// writes.
func (p *Postgres) Promote() {
	p.t.Helper()
	p.run("pg_ctl", "-D", p.data, "-w", "-t", "60", "promote")
}

// URL is the connection URL of database db as the postgres superuser.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.Port, db)
}

// Log returns the server's log so far, for failure messages.
func (p *Postgres) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "server.log"))
	return string(b)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faulttest: find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
