package sqlite_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/ptrutil"
	"github.com/pharox/pharox/internal/testfactory"
	"github.com/pharox/pharox/storage/sqlite"
)

// envCrashChild names the database file a crash-test child hammers.
const envCrashChild = "PHAROX_SQLITE_CRASH_CHILD"

// crashReadyOps is how many operations a child completes before it tells
// the parent it is under load.
const crashReadyOps = 300

// TestCrashRecovery kills a child process that is acquiring, renewing and
// releasing leases from several goroutines with SIGKILL, mid-load, several
// times over one file. After every kill the file must pass PRAGMA
// integrity_check, every proxy's current_leases must equal its number of
// active leases, and the store must keep working.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "crash.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := testfactory.PoolWithProxies(t.Context(), t, s, &testfactory.PoolOpts{Name: ptrutil.Ptr("crash")}, 12, &testfactory.ProxyOpts{MaxConcurrency: ptrutil.Ptr(2)})
	unlimited := []pharox.Proxy{{PoolID: pool.ID, Host: "10.9.9.9", Port: 9, Protocol: pharox.ProtocolSOCKS5, Country: "AR"}}
	if _, err := s.AddProxies(ctx, unlimited); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	const rounds = 3
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), envCrashChild+"="+path)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan error, 1)
		go func() {
			sc := bufio.NewScanner(stdout)
			var lines []string
			for sc.Scan() {
				if sc.Text() == "CRASH-CHILD-READY" {
					ready <- nil
					// Keep draining so the child never blocks on a full pipe.
					for sc.Scan() {
					}
					return
				}
				lines = append(lines, sc.Text())
			}
			ready <- fmt.Errorf("child ended before it was ready:\n%s", strings.Join(lines, "\n"))
		}()
		select {
		case err := <-ready:
			if err != nil {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: %v\nstderr:\n%s", round, err, stderr.String())
			}
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: child not ready after 60s\nstderr:\n%s", round, stderr.String())
		}
		// Kill at a random point of the load, not at a fixed phase.
		time.Sleep(time.Duration(20+rand.IntN(200)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child did not die of SIGKILL: %v\nstderr:\n%s", round, err, stderr.String())
		}

		// Check the file with a fresh connection before the store opens it.
		if res := integrityCheck(t, path); res != "ok" {
			t.Fatalf("round %d: integrity_check: %s", round, res)
		}
		if bad := counterMismatches(t, path); len(bad) > 0 {
			t.Fatalf("round %d: counters disagree with active leases after SIGKILL:\n%s", round, strings.Join(bad, "\n"))
		}
		checkStoreAfterCrash(t, path, pool)
	}
}

// checkStoreAfterCrash reopens the store and checks it through the public
// API: limits hold, counters match the lease records, and it still leases.
func checkStoreAfterCrash(t *testing.T, path string, pool *pharox.Pool) {
	t.Helper()
	ctx := context.Background()
	// A frozen clock: leases stranded by the kill expire while the checks
	// run, and each read reclaims what has expired by its own clock reading.
	frozen := time.Now()
	s, err := sqlite.Open(ctx, path, sqlite.WithClock(func() time.Time { return frozen }))
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer s.Close()
	proxies, err := s.ListProxies(ctx, pool.ID)
	if err != nil {
		t.Fatal(err)
	}
	active, err := s.ListLeases(ctx, pharox.LeaseQuery{PoolID: pool.ID, Status: pharox.LeaseActive})
	if err != nil {
		t.Fatal(err)
	}
	perProxy := map[string]int{}
	for _, l := range active {
		perProxy[l.ProxyID.String()]++
	}
	for _, p := range proxies {
		if p.CurrentLeases != perProxy[p.ID.String()] {
			t.Errorf("proxy %s: CurrentLeases %d, %d active leases", p.ID, p.CurrentLeases, perProxy[p.ID.String()])
		}
		if p.MaxConcurrency != nil && p.CurrentLeases > *p.MaxConcurrency {
			t.Errorf("proxy %s holds %d leases over its limit %d", p.ID, p.CurrentLeases, *p.MaxConcurrency)
		}
	}
	c := testfactory.Consumer(t.Context(), t, s, &testfactory.ConsumerOpts{Name: ptrutil.Ptr("after-crash")})
	r := req(pool.Name, c)
	r.Filters = &pharox.Filters{Country: "AR"} // the unlimited proxy
	l, err := s.AcquireLease(ctx, r)
	if err != nil {
		t.Fatalf("acquire after crash: %v", err)
	}
	if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil {
		t.Fatalf("release after crash: %v", err)
	}
}

// TestCrashChild is the child of TestCrashRecovery; it does nothing unless
// started by it. It loads the store until killed.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(envCrashChild)
	if path == "" {
		t.Skip("helper process of TestCrashRecovery")
	}
	ctx := context.Background()
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, fmt.Sprintf("child-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	var (
		ops       atomic.Int64
		readyOnce sync.Once
		wg        sync.WaitGroup
	)
	// A safety net: a child whose parent died must not run forever.
	deadline := time.Now().Add(60 * time.Second)
	strategies := pharox.AllStrategies
	for g := range 8 {
		wg.Go(func() {
			var held []*pharox.Lease
			for time.Now().Before(deadline) {
				r := pharox.AcquireRequest{PoolName: "crash", ConsumerID: c.ID, ConsumerName: c.Name,
					// Short leases: the ones a kill strands expire and are
					// reclaimed by the next child.
					Duration: time.Duration(300+rand.IntN(1500)) * time.Millisecond,
					Strategy: strategies[rand.IntN(len(strategies))]}
				if rand.IntN(4) == 0 {
					r.SessionKey, r.SessionTTL = fmt.Sprintf("s%d", rand.IntN(5)), time.Second
				}
				l, err := s.AcquireLease(ctx, r)
				switch {
				case err == nil:
					held = append(held, l)
				case !errors.Is(err, pharox.ErrNoProxyAvailable):
					t.Errorf("acquire: %v", err)
					return
				}
				if len(held) > 0 && (len(held) > 3 || rand.IntN(2) == 0) {
					i := rand.IntN(len(held))
					l := held[i]
					held = append(held[:i], held[i+1:]...)
					if rand.IntN(5) == 0 {
						if _, err := s.RenewLease(ctx, l.ID, time.Second); err != nil && !errors.Is(err, pharox.ErrLeaseNotActive) {
							t.Errorf("renew: %v", err)
							return
						}
						held = append(held, l)
					} else if _, err := s.ReleaseLease(ctx, l.ID, nil); err != nil && !errors.Is(err, pharox.ErrLeaseNotActive) {
						t.Errorf("release: %v", err)
						return
					}
				}
				if g == 0 && rand.IntN(50) == 0 {
					if _, err := s.CleanupExpiredLeases(ctx); err != nil {
						t.Errorf("cleanup: %v", err)
						return
					}
				}
				if ops.Add(1) == crashReadyOps {
					readyOnce.Do(func() { fmt.Println("CRASH-CHILD-READY") })
				}
			}
		})
	}
	wg.Wait()
	s.Close()
}
