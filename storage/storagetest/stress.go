package storagetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/pharox/pharox"
)

var stressTests = []subtest{
	{name: "ConcurrentAcquireRelease", fn: testStress},
	{name: "ConcurrentExpiry", fn: testStressExpiry},
}

// stressIterations is how many acquisitions each stress goroutine attempts.
// PHAROX_STORAGETEST_STRESS_ITERATIONS overrides it, for soak runs.
func stressIterations(def int) int {
	if v, err := strconv.Atoi(os.Getenv("PHAROX_STORAGETEST_STRESS_ITERATIONS")); err == nil && v > 0 {
		return v
	}
	if testing.Short() {
		return max(1, def/4)
	}
	return def
}

// stressBudget bounds a stress run's wall time as well: goroutines start no
// new iteration after it, so a slow shared store on a busy machine still
// finishes quickly. Every check holds however many iterations ran.
const stressBudget = 3 * time.Second

// stressTally is what the goroutines of a stress run observed.
type stressTally struct {
	acquired, released, misses atomic.Int64
	mu                         sync.Mutex
	errs                       []string
}

func (s *stressTally) fail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) < 10 {
		s.errs = append(s.errs, fmt.Sprintf(format, args...))
	}
}

func (s *stressTally) check(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.errs {
		t.Error(e)
	}
	if len(s.errs) > 0 {
		t.FailNow()
	}
}

func testStress(t *testing.T, f *fixture) {
	const goroutines = 64
	iterations := stressIterations(40)
	pool := f.pool("stress")
	limited := f.addN(pool, 5, 2)
	spare := f.proxy(pool)
	spare.Country = "ZZ"
	unlimited := f.add(spare)[0]
	maxc := map[uuid.UUID]int{}
	for _, p := range limited {
		maxc[p.ID] = 2
	}
	inUse := map[uuid.UUID]*atomic.Int32{unlimited.ID: new(atomic.Int32)}
	for _, p := range limited {
		inUse[p.ID] = new(atomic.Int32)
	}

	var tally stressTally
	var wg sync.WaitGroup
	var deadline time.Time // set before start is closed
	start := make(chan struct{})
	for g := range goroutines {
		wg.Go(func() {
			<-start
			req := f.req("stress")
			req.Strategy = pharox.AllStrategies[g%len(pharox.AllStrategies)]
			if g%8 == 7 {
				req.SessionKey, req.SessionTTL = fmt.Sprintf("stress-%d", g%3), time.Minute
			}
			if g%16 == 5 {
				// Some goroutines only want the limited proxies.
				req.Filters = &pharox.Filters{NoneOf: []pharox.Filters{{Country: "ZZ"}}}
			}
			for range iterations {
				if time.Now().After(deadline) {
					return
				}
				l, err := f.s.AcquireLease(f.ctx, req)
				if errors.Is(err, pharox.ErrNoProxyAvailable) {
					tally.misses.Add(1)
					continue
				}
				if err != nil {
					tally.fail("goroutine %d: AcquireLease: %v", g, err)
					return
				}
				tally.acquired.Add(1)
				c, ok := inUse[l.ProxyID]
				if !ok {
					tally.fail("goroutine %d: leased unknown proxy %s", g, l.ProxyID)
					return
				}
				if n := c.Add(1); maxc[l.ProxyID] > 0 && int(n) > maxc[l.ProxyID] {
					tally.fail("proxy %s (max_concurrency %d) held by %d goroutines at once", l.ProxyID, maxc[l.ProxyID], n)
				}
				if rand.IntN(4) == 0 {
					time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
				}
				c.Add(-1)
				if _, err := f.s.ReleaseLease(f.ctx, l.ID, nil); err != nil {
					tally.fail("goroutine %d: ReleaseLease(%s): %v", g, l.ID, err)
					return
				}
				tally.released.Add(1)
			}
		})
	}
	deadline = time.Now().Add(stressBudget)
	close(start)
	wg.Wait()
	tally.check(t)
	acquired := int(tally.acquired.Load())
	t.Logf("%d goroutines x up to %d attempts: %d leases, %d misses", goroutines, iterations, acquired, tally.misses.Load())
	if acquired == 0 {
		t.Fatal("no acquisition succeeded")
	}
	verifyQuiescent(t, f, pool, acquired, maxc)
}

// verifyQuiescent checks a pool after every goroutine stopped: no proxy
// holds a lease, the lease records are exactly the acquisitions made, all
// ended, and their intervals never exceed any proxy's limit.
func verifyQuiescent(t *testing.T, f *fixture, pool *pharox.Pool, acquired int, maxc map[uuid.UUID]int) {
	t.Helper()
	ps, err := f.s.ListProxies(f.ctx, pool.ID)
	if err != nil {
		t.Fatalf("ListProxies: %v", err)
	}
	for _, p := range ps {
		if p.CurrentLeases != 0 {
			t.Errorf("proxy %s CurrentLeases = %d after every lease ended, want 0", p.ID, p.CurrentLeases)
		}
	}
	if st := f.stats(pool.Name); st.TotalLeases != 0 || st.LeasedProxies != 0 {
		t.Errorf("stats after every lease ended: TotalLeases %d, LeasedProxies %d; want 0, 0", st.TotalLeases, st.LeasedProxies)
	}
	leases := f.leases(pharox.LeaseQuery{PoolID: pool.ID})
	if len(leases) != acquired {
		t.Errorf("ListLeases has %d leases, but %d acquisitions succeeded (lost or invented leases)", len(leases), acquired)
	}
	seen := map[uuid.UUID]bool{}
	for _, l := range leases {
		if seen[l.ID] {
			t.Errorf("lease %s listed twice", l.ID)
		}
		seen[l.ID] = true
		if l.Status == pharox.LeaseActive {
			t.Errorf("lease %s still active after every goroutine ended its leases", l.ID)
		}
	}
	AuditLeases(t, leases, maxc)
}

// testStressExpiry has goroutines abandon short leases, so that expired
// leases are reclaimed by other goroutines' acquisitions and by concurrent
// cleanups while the audit watches the slots.
func testStressExpiry(t *testing.T, f *fixture) {
	const goroutines = 16
	iterations := stressIterations(12)
	pool := f.pool("stress-expiry")
	ps := f.addN(pool, 3, 1)
	maxc := map[uuid.UUID]int{}
	for _, p := range ps {
		maxc[p.ID] = 1
	}
	var tally stressTally
	var abandoned atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var cleaned atomic.Int64
	var cleaner sync.WaitGroup
	cleaner.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			n, err := f.s.CleanupExpiredLeases(f.ctx)
			if err != nil {
				tally.fail("CleanupExpiredLeases: %v", err)
				return
			}
			cleaned.Add(int64(n))
		}
	})
	deadline := time.Now().Add(stressBudget)
	for g := range goroutines {
		wg.Go(func() {
			req := f.req("stress-expiry")
			req.Strategy = pharox.AllStrategies[g%len(pharox.AllStrategies)]
			for i := range iterations {
				if time.Now().After(deadline) {
					return
				}
				abandon := (g+i)%3 == 0
				req.Duration = time.Minute
				if abandon {
					req.Duration = 30 * time.Millisecond
				}
				l, err := f.s.AcquireLease(f.ctx, req)
				if errors.Is(err, pharox.ErrNoProxyAvailable) {
					tally.misses.Add(1)
					time.Sleep(time.Duration(5+rand.IntN(10)) * time.Millisecond)
					continue
				}
				if err != nil {
					tally.fail("goroutine %d: AcquireLease: %v", g, err)
					return
				}
				tally.acquired.Add(1)
				if abandon {
					abandoned.Add(1)
					continue
				}
				time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
				if _, err := f.s.ReleaseLease(f.ctx, l.ID, nil); err != nil {
					tally.fail("goroutine %d: ReleaseLease(%s) of a one-minute lease: %v", g, l.ID, err)
					return
				}
				tally.released.Add(1)
			}
		})
	}
	wg.Wait()
	close(stop)
	cleaner.Wait()
	tally.check(t)

	time.Sleep(60 * time.Millisecond) // the last abandoned leases expire
	n, err := f.s.CleanupExpiredLeases(f.ctx)
	if err != nil {
		t.Fatalf("final CleanupExpiredLeases: %v", err)
	}
	cleaned.Add(int64(n))
	acquired := int(tally.acquired.Load())
	t.Logf("%d leases (%d abandoned), %d misses, %d ended by cleanup", acquired, abandoned.Load(), tally.misses.Load(), cleaned.Load())
	verifyQuiescent(t, f, pool, acquired, maxc)
	leases := f.leases(pharox.LeaseQuery{PoolID: pool.ID})
	var nReleased, nExpired int
	for _, l := range leases {
		switch l.Status {
		case pharox.LeaseReleased:
			nReleased++
		case pharox.LeaseExpired:
			nExpired++
		}
	}
	if int64(nReleased) != tally.released.Load() || int64(nExpired) != abandoned.Load() {
		t.Errorf("lease records: %d released, %d expired; goroutines released %d and abandoned %d",
			nReleased, nExpired, tally.released.Load(), abandoned.Load())
	}
	if c := cleaned.Load(); c > int64(nExpired) {
		t.Errorf("CleanupExpiredLeases reported %d leases ended in total, but only %d leases expired (counted twice?)", c, nExpired)
	}
}
