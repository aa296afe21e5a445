package storagetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pharox/pharox"
)

var quotaConcurrencyTests = []subtest{
	{name: "ConsumerCapsHold", fn: testQuotaConcurrentCaps},
}

// heldInterval is a lease as its holder saw it: from AcquireLease
// returning to ReleaseLease being called. It lies inside the time the
// store counted the lease as active, so more than a cap of these
// overlapping at one instant means the store let more than the cap be
// active at once; the store's own counters and timestamps are not used.
type heldInterval struct {
	from, to time.Time
}

// maxOverlap returns how many intervals overlap at most at one instant
// (an interval ending when another starts does not overlap it).
func maxOverlap(ivs []heldInterval) int {
	type event struct {
		at    time.Time
		delta int
	}
	ev := make([]event, 0, 2*len(ivs))
	for _, iv := range ivs {
		ev = append(ev, event{iv.from, 1}, event{iv.to, -1})
	}
	slices.SortFunc(ev, func(a, b event) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.delta - b.delta // ends first
	})
	cur, peak := 0, 0
	for _, e := range ev {
		cur += e.delta
		peak = max(peak, cur)
	}
	return peak
}

// testQuotaConcurrentCaps runs goroutines acquiring as three consumers
// with caps 1, 2 and 3 at once, on a pool with room for all of them
// (refusals are QuotaErrors, nothing else may fail), and
// judges from the intervals each goroutine held its leases that no
// consumer ever held more than its cap, and that each reached it (so the
// judgement is not empty).
func testQuotaConcurrentCaps(t *testing.T, f *fixture) {
	const (
		perConsumer = 6
		run         = 600 * time.Millisecond
	)
	pool := f.pool("quota-race")
	f.addN(pool, 4, 0)
	caps := []int{1, 2, 3}
	consumers := make([]*pharox.Consumer, len(caps))
	for i, c := range caps {
		consumers[i] = f.consumerNamed(fmt.Sprintf("capped-%d", c))
		f.setQuota(consumerQuota(consumers[i].ID, pharox.QuotaLimits{MaxConcurrentLeases: c}))
	}
	var mu sync.Mutex
	held := make([][]heldInterval, len(caps))
	refusals := make([]int, len(caps))
	var errs []error
	deadline := time.Now().Add(run)
	// A holder keeps its lease until its consumer's holders fill the cap
	// (or a while has passed, longer on a slow store), so the cap is
	// reached however slow the store; holding only drives the test, the
	// judgement is the intervals.
	holding := make([]atomic.Int32, len(caps))
	var wg sync.WaitGroup
	for i := range caps {
		for g := range perConsumer {
			wg.Go(func() {
				req := as(f.req(pool.Name), consumers[i])
				req.Strategy = pharox.AllStrategies[g%len(pharox.AllStrategies)]
				for time.Now().Before(deadline) {
					called := time.Now()
					l, err := f.s.AcquireLease(f.ctx, req)
					from := time.Now()
					if qe, ok := errors.AsType[*pharox.QuotaError](err); ok && qe.Limit == pharox.LimitMaxConcurrentLeases {
						mu.Lock()
						refusals[i]++
						mu.Unlock()
						time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
						continue
					}
					if err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
						return
					}
					holding[i].Add(1)
					// Wait for the others at least as long again as this
					// acquisition took: on a slow store (FerretDB on a busy
					// machine) theirs take as long.
					patience := max(200*time.Millisecond, 2*from.Sub(called))
					for wait := time.Now().Add(patience); int(holding[i].Load()) < caps[i] && time.Now().Before(wait); {
						time.Sleep(200 * time.Microsecond)
					}
					time.Sleep(time.Duration(rand.IntN(1000)) * time.Microsecond)
					holding[i].Add(-1)
					to := time.Now()
					_, err = f.s.ReleaseLease(f.ctx, l.ID, nil)
					mu.Lock()
					held[i] = append(held[i], heldInterval{from, to})
					if err != nil {
						errs = append(errs, fmt.Errorf("ReleaseLease(%s): %w", l.ID, err))
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	for _, err := range errs[:min(len(errs), 5)] {
		t.Errorf("concurrent capped acquisitions: %v", err)
	}
	for i, c := range caps {
		peak := maxOverlap(held[i])
		t.Logf("consumer with cap %d: %d leases, %d refusals, at most %d held at once", c, len(held[i]), refusals[i], peak)
		if peak > c {
			t.Errorf("consumer with max_concurrent_leases=%d held %d leases at once (judged from when AcquireLease returned to when ReleaseLease was called)", c, peak)
		}
		if peak < c {
			t.Errorf("consumer with max_concurrent_leases=%d never held more than %d leases at once in %v with %d goroutines: the cap was never reached, so the test judged nothing", c, peak, run, perConsumer)
		}
		if refusals[i] == 0 {
			t.Errorf("consumer with max_concurrent_leases=%d was never refused with %d goroutines acquiring", c, perConsumer)
		}
	}
	// Nothing is left counted: each consumer can take its cap again.
	for i, c := range caps {
		req := as(f.req(pool.Name), consumers[i])
		for range c {
			f.acquire(req)
		}
		f.refused(req, pharox.QuotaConsumer, consumers[i].ID, pharox.LimitMaxConcurrentLeases, fmt.Sprintf("cap %d taken after the run", c))
	}
}
