package batch

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gate is an Exec that records its batches and, while closed, holds each
// batch until the test lets it go.
type gate struct {
	mu      sync.Mutex
	batches [][]int
	keys    []string
	started chan int      // receives the size of each batch as it starts
	proceed chan struct{} // one receive per batch
}

func newGate() *gate {
	return &gate{started: make(chan int, 100), proceed: make(chan struct{}, 100)}
}

func (g *gate) exec(_ context.Context, key string, in []int) []Result[string] {
	g.mu.Lock()
	g.batches = append(g.batches, slices.Clone(in))
	g.keys = append(g.keys, key)
	g.mu.Unlock()
	g.started <- len(in)
	<-g.proceed
	out := make([]Result[string], len(in))
	for i, v := range in {
		if v < 0 {
			out[i].Err = fmt.Errorf("negative %d", v)
			continue
		}
		out[i].Val = fmt.Sprintf("%s:%d", key, v)
	}
	return out
}

type outcome struct {
	val string
	err error
}

func goDo(ctx context.Context, c *Coalescer[string, int, string], key string, v int) chan outcome {
	ch := make(chan outcome, 1)
	go func() {
		val, err := c.Do(ctx, key, v)
		ch <- outcome{val, err}
	}()
	return ch
}

func (g *gate) seen() [][]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.batches)
}

// waitQueued waits until n calls of key are queued behind running batches,
// or, for n = -1, until the key has no queue at all.
func waitQueued(t *testing.T, c *Coalescer[string, int, string], key string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		got := -1
		if q := c.queues[key]; q != nil {
			got = len(q.pending)
		}
		c.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls queued, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestLoneCallRunsAtOnce(t *testing.T) {
	g := newGate()
	g.proceed <- struct{}{}
	c := New(g.exec, Options[string]{})
	got, err := c.Do(context.Background(), "k", 7)
	if err != nil || got != "k:7" {
		t.Fatalf("Do = %q, %v; want k:7", got, err)
	}
	if b := g.seen(); len(b) != 1 || len(b[0]) != 1 {
		t.Fatalf("batches = %v, want one batch of one", b)
	}
	// The queue of a key goes once its last batch has delivered.
	waitQueued(t, c, "k", -1)
}

func TestWaitingCallsLeaveTogetherInOrder(t *testing.T) {
	g := newGate()
	c := New(g.exec, Options[string]{MaxBatch: 4})
	ctx := context.Background()
	first := goDo(ctx, c, "k", 0)
	if n := <-g.started; n != 1 {
		t.Fatalf("first batch has %d calls, want 1", n)
	}
	var waiting []chan outcome
	for i := 1; i <= 6; i++ {
		waiting = append(waiting, goDo(ctx, c, "k", i))
		waitQueued(t, c, "k", i) // fixes the queue order
	}
	for range 3 {
		g.proceed <- struct{}{}
	}
	if o := <-first; o.val != "k:0" || o.err != nil {
		t.Fatalf("first call = %+v", o)
	}
	for i, ch := range waiting {
		if o := <-ch; o.val != fmt.Sprintf("k:%d", i+1) || o.err != nil {
			t.Fatalf("call %d = %+v", i+1, o)
		}
	}
	want := [][]int{{0}, {1, 2, 3, 4}, {5, 6}}
	if !slices.EqualFunc(g.seen(), want, slices.Equal) {
		t.Fatalf("batches = %v, want %v (MaxBatch 4, queue order)", g.seen(), want)
	}
}

// TestCallersWokenTogetherLeaveTogether wakes several callers at once, as
// a finished batch does: the first to run yields before running alone, so
// the others queue behind it and all leave in one batch. With one
// processor every woken goroutine runs before the yielding one resumes,
// except when the scheduler takes its periodic turn at the global queue
// first (one schedule in 61), so the test asks for most rounds, not all;
// without the yield no round would pass.
func TestCallersWokenTogetherLeaveTogether(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const rounds, callers = 20, 5
	together := 0
	for range rounds {
		var mu sync.Mutex
		var sizes []int
		c := New(func(_ context.Context, _ string, in []int) []Result[int] {
			mu.Lock()
			sizes = append(sizes, len(in))
			mu.Unlock()
			return make([]Result[int], len(in))
		}, Options[int]{})
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				<-start
				if _, err := c.Do(context.Background(), "k", i); err != nil {
					t.Error(err)
				}
			})
		}
		time.Sleep(5 * time.Millisecond) // every caller blocks on start
		close(start)
		wg.Wait()
		if len(sizes) == 1 && sizes[0] == callers {
			together++
		}
	}
	t.Logf("%d of %d rounds together", together, rounds)
	if together < rounds/2 {
		t.Fatalf("%d callers woken together left in one batch in %d of %d rounds, want most", callers, together, rounds)
	}
}

func TestPerCallErrors(t *testing.T) {
	g := newGate()
	c := New(g.exec, Options[string]{})
	ctx := context.Background()
	first := goDo(ctx, c, "k", 1)
	<-g.started
	bad, good := goDo(ctx, c, "k", -1), goDo(ctx, c, "k", 2)
	waitQueued(t, c, "k", 2)
	g.proceed <- struct{}{}
	g.proceed <- struct{}{}
	<-first
	if o := <-bad; o.err == nil || o.val != "" {
		t.Fatalf("failing call = %+v, want its own error", o)
	}
	if o := <-good; o.err != nil || o.val != "k:2" {
		t.Fatalf("call beside a failing one = %+v", o)
	}
}

func TestKeysDoNotMix(t *testing.T) {
	g := newGate()
	c := New(g.exec, Options[string]{})
	ctx := context.Background()
	a, b := goDo(ctx, c, "a", 1), goDo(ctx, c, "b", 2)
	<-g.started
	<-g.started // both keys run at once: MaxInFlight is per key
	g.proceed <- struct{}{}
	g.proceed <- struct{}{}
	if o := <-a; o.val != "a:1" {
		t.Fatalf("a = %+v", o)
	}
	if o := <-b; o.val != "b:2" {
		t.Fatalf("b = %+v", o)
	}
}

func TestMaxInFlight(t *testing.T) {
	g := newGate()
	c := New(g.exec, Options[string]{MaxInFlight: 2})
	ctx := context.Background()
	one, two := goDo(ctx, c, "k", 1), goDo(ctx, c, "k", 2)
	<-g.started
	<-g.started
	three := goDo(ctx, c, "k", 3)
	waitQueued(t, c, "k", 1)
	for range 3 {
		g.proceed <- struct{}{}
	}
	for _, ch := range []chan outcome{one, two, three} {
		if o := <-ch; o.err != nil {
			t.Fatal(o.err)
		}
	}
	if b := g.seen(); len(b) != 3 {
		t.Fatalf("batches = %v, want three of one", b)
	}
}

func TestCancelWhileQueuedWithdraws(t *testing.T) {
	g := newGate()
	c := New(g.exec, Options[string]{})
	first := goDo(context.Background(), c, "k", 1)
	<-g.started
	ctx, cancel := context.WithCancel(context.Background())
	gone := goDo(ctx, c, "k", 2)
	stays := goDo(context.Background(), c, "k", 3)
	waitQueued(t, c, "k", 2)
	cancel()
	if o := <-gone; !errors.Is(o.err, context.Canceled) {
		t.Fatalf("cancelled call = %+v, want context.Canceled", o)
	}
	g.proceed <- struct{}{}
	g.proceed <- struct{}{}
	<-first
	<-stays
	if want := [][]int{{1}, {3}}; !slices.EqualFunc(g.seen(), want, slices.Equal) {
		t.Fatalf("batches = %v, want %v: a withdrawn call must not run", g.seen(), want)
	}
}

func TestCancelAfterSendDiscards(t *testing.T) {
	g := newGate()
	discarded := make(chan string, 1)
	c := New(g.exec, Options[string]{Discard: func(v string) { discarded <- v }})
	first := goDo(context.Background(), c, "k", 1)
	<-g.started
	ctx, cancel := context.WithCancel(context.Background())
	gone := goDo(ctx, c, "k", 5)
	waitQueued(t, c, "k", 1)
	g.proceed <- struct{}{} // the first call ends; the queued one is sent
	<-first
	if n := <-g.started; n != 1 {
		t.Fatalf("second batch has %d calls, want 1", n)
	}
	cancel()
	if o := <-gone; !errors.Is(o.err, context.Canceled) {
		t.Fatalf("cancelled call = %+v, want context.Canceled", o)
	}
	g.proceed <- struct{}{}
	select {
	case v := <-discarded:
		if v != "k:5" {
			t.Fatalf("discarded %q, want k:5", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the result of an abandoned call was not discarded")
	}
}

// TestLoneCallUsesCallersContext: a call that runs alone runs with its own
// context, so cancelling it reaches the work, as without batching.
func TestLoneCallUsesCallersContext(t *testing.T) {
	exec := func(ctx context.Context, _ string, in []int) []Result[int] {
		select {
		case <-ctx.Done():
			return []Result[int]{{Err: ctx.Err()}}
		case <-time.After(10 * time.Second):
			return []Result[int]{{Val: 1}}
		}
	}
	c := New(exec, Options[int]{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := c.Do(ctx, "k", 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do = %v, want the caller's deadline to reach the work", err)
	}
}

// TestQueuedBatchOutlivesCallers: a queued batch runs without its callers'
// cancellation but with the values of its first call's context.
func TestQueuedBatchOutlivesCallers(t *testing.T) {
	type key struct{}
	var sawErr, sawVal atomic.Value
	hold, second := make(chan struct{}), make(chan struct{})
	exec := func(ctx context.Context, _ string, in []int) []Result[int] {
		if in[0] == 1 {
			<-hold
			return make([]Result[int], len(in))
		}
		<-second
		sawErr.Store(fmt.Sprint(ctx.Err()))
		sawVal.Store(fmt.Sprint(ctx.Value(key{})))
		return make([]Result[int], len(in))
	}
	done := make(chan struct{})
	c := New(exec, Options[int]{Discard: func(int) { close(done) }})
	firstDone := make(chan struct{})
	go func() { c.Do(context.Background(), "k", 1); close(firstDone) }()
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	errc := make(chan error, 1)
	waitRunning := func() {
		for {
			c.mu.Lock()
			q := c.queues["k"]
			running := q != nil && q.inFlight == 1
			c.mu.Unlock()
			if running {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitRunning()
	go func() { _, err := c.Do(ctx, "k", 2); errc <- err }()
	for {
		c.mu.Lock()
		n := len(c.queues["k"].pending)
		c.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(hold) // the queued call is sent in a batch of its own
	<-firstDone
	for {
		c.mu.Lock()
		n := len(c.queues["k"].pending)
		c.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller got %v", err)
	}
	close(second)
	<-done
	if sawErr.Load() != "<nil>" || sawVal.Load() != "v" {
		t.Fatalf("batch saw ctx err %v, value %v; want no cancellation and the caller's values", sawErr.Load(), sawVal.Load())
	}
}

// TestNoResultLost runs many callers that cancel at random against an Exec
// that hands out numbered tickets: every ticket handed out must reach its
// caller or Discard, exactly once.
func TestNoResultLost(t *testing.T) {
	var issued atomic.Int64
	exec := func(_ context.Context, _ int, in []int) []Result[int64] {
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		out := make([]Result[int64], len(in))
		for i := range in {
			out[i].Val = issued.Add(1)
		}
		return out
	}
	var mu sync.Mutex
	seen := map[int64]int{}
	note := func(v int64) {
		mu.Lock()
		seen[v]++
		mu.Unlock()
	}
	c := New(exec, Options[int64]{MaxBatch: 8, MaxInFlight: 2, Discard: note})
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for range 200 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(300))*time.Microsecond)
				v, err := c.Do(ctx, g%3, 0)
				cancel()
				if err == nil {
					note(v)
				} else if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("unexpected error %v", err)
				}
			}
		})
	}
	wg.Wait()
	// Batches of abandoned calls may still run: wait until none does.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		idle := len(c.queues) == 0
		c.mu.Unlock()
		if idle {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("batches still running 5s after the last call")
		}
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for v := int64(1); v <= issued.Load(); v++ {
		if seen[v] != 1 {
			t.Fatalf("ticket %d reached callers or Discard %d times, want once (%d issued)", v, seen[v], issued.Load())
		}
	}
}

// TestPanicFreesThePlace: a call whose work panics (recovered by its
// caller, as an HTTP server does) does not leave its key blocked.
func TestPanicFreesThePlace(t *testing.T) {
	exec := func(_ context.Context, _ string, in []int) []Result[int] {
		if in[0] < 0 {
			panic("boom")
		}
		return []Result[int]{{Val: in[0]}}
	}
	c := New(exec, Options[int]{})
	func() {
		defer func() { _ = recover() }()
		c.Do(context.Background(), "k", -1)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if v, err := c.Do(ctx, "k", 7); err != nil || v != 7 {
		t.Fatalf("Do after a panic = %d, %v; want 7 (the key stayed blocked)", v, err)
	}
}
