// Package batch coalesces concurrent calls into batches, so that a storage
// driver can serve many goroutines' acquisitions or releases with one
// database statement or script.
//
// Batching is opportunistic: a call that finds fewer than MaxInFlight
// batches of its key running takes a place and yields the processor once
// (runtime.Gosched), so that goroutines made runnable with it, such as
// the callers a finished batch has just answered, can queue behind it. If
// none did, it runs at once, alone, on its own goroutine and with its own
// context, exactly like a call without batching; otherwise it leads them
// as one batch. Calls that arrive while every place is taken queue up and
// leave together in the next batch, which a background goroutine runs.
// Under load, batches therefore grow to about the number of waiting
// callers, and the fixed cost of a statement (parsing, planning, a round
// trip, a commit and its WAL flush) is paid once per batch rather than
// once per call.
//
// Without the yield, a burst of callers woken together split into one
// call alone and a batch of all the others, which waited for the lone
// call's round trip; with it, they leave together. The yield costs a lone
// caller a pass through the scheduler, which only goroutines that are
// ready to run can lengthen.
package batch

import (
	"context"
	"errors"
	"runtime"
	"sync"
)

// Result is the outcome of one call in a batch.
type Result[Out any] struct {
	Val Out
	Err error
}

// Exec runs one batch. It returns one Result per input, in input order.
// A call that runs alone at once passes its own ctx. A queued batch gets
// the values of its first call's ctx but no cancellation from any caller:
// it runs to completion once started, and its results for callers that
// have gone are passed to Discard.
type Exec[K comparable, In, Out any] func(ctx context.Context, key K, in []In) []Result[Out]

// Coalescer runs calls with equal keys in batches through Exec. The zero
// value is not usable; see New.
type Coalescer[K comparable, In, Out any] struct {
	exec        Exec[K, In, Out]
	discard     func(Out)
	maxBatch    int
	maxInFlight int

	mu     sync.Mutex
	queues map[K]*queue[In, Out]
}

// Options tunes a Coalescer.
type Options[Out any] struct {
	// MaxBatch caps how many calls one batch carries (default 64).
	MaxBatch int
	// MaxInFlight is how many batches of one key may run at once
	// (default 1).
	MaxInFlight int
	// Discard receives each successful result whose caller stopped
	// waiting (its context ended) after its call had been sent, for
	// example to release a lease nobody will use. It runs on the
	// batch's goroutine.
	Discard func(Out)
}

// New returns a Coalescer that runs batches through exec.
func New[K comparable, In, Out any](exec Exec[K, In, Out], opts Options[Out]) *Coalescer[K, In, Out] {
	c := &Coalescer[K, In, Out]{
		exec:        exec,
		discard:     opts.Discard,
		maxBatch:    opts.MaxBatch,
		maxInFlight: opts.MaxInFlight,
		queues:      make(map[K]*queue[In, Out]),
	}
	if c.maxBatch < 1 {
		c.maxBatch = 64
	}
	if c.maxInFlight < 1 {
		c.maxInFlight = 1
	}
	return c
}

type queue[In, Out any] struct {
	inFlight int
	pending  []*call[In, Out]
}

// call states, guarded by Coalescer.mu.
const (
	queued = iota
	sent
	delivered
	abandoned
)

type call[In, Out any] struct {
	ctx   context.Context
	in    In
	state int
	res   Result[Out]
	done  chan struct{}
}

// Queued reports how many calls wait in queues for a batch.
func (c *Coalescer[K, In, Out]) Queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, q := range c.queues {
		n += len(q.pending)
	}
	return n
}

// Do runs in as part of a batch of calls with key and returns its result.
// When ctx ends first, Do returns ctx.Err(): a call still queued is
// withdrawn; one already sent completes in the background and its result,
// if successful, goes to Discard.
func (c *Coalescer[K, In, Out]) Do(ctx context.Context, key K, in In) (Out, error) {
	cl := &call[In, Out]{ctx: ctx, in: in, done: make(chan struct{})}
	c.mu.Lock()
	q := c.queues[key]
	if q == nil {
		q = &queue[In, Out]{}
		c.queues[key] = q
	}
	if q.inFlight < c.maxInFlight {
		q.inFlight++
		cl.state = sent
		c.mu.Unlock()
		runtime.Gosched()
		c.mu.Lock()
		if len(q.pending) > 0 {
			// Company arrived: lead it as a batch, in arrival order.
			q.pending = append([]*call[In, Out]{cl}, q.pending...)
			batch := c.take(q)
			c.mu.Unlock()
			go c.run(key, q, batch)
			return c.wait(ctx, q, cl)
		}
		c.mu.Unlock()
		// Alone: no hand-off to another goroutine, and the caller's own
		// context governs its call, as without batching. The place is
		// passed on even if exec panics (an HTTP server recovers handler
		// panics; the key's queue must not stay blocked).
		defer func() {
			if next := c.next(key, q); next != nil {
				go c.run(key, q, next)
			}
		}()
		r := c.exec(ctx, key, []In{in})
		if len(r) == 0 {
			r = []Result[Out]{{Err: errShortResult}}
		}
		return r[0].Val, r[0].Err
	}
	q.pending = append(q.pending, cl)
	c.mu.Unlock()
	return c.wait(ctx, q, cl)
}

// wait waits for the result of cl, a call of q that is queued or sent.
func (c *Coalescer[K, In, Out]) wait(ctx context.Context, q *queue[In, Out], cl *call[In, Out]) (Out, error) {
	select {
	case <-cl.done:
		return cl.res.Val, cl.res.Err
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch cl.state {
	case delivered:
		// The result arrived while the context ended: hand it over rather
		// than lose it.
		return cl.res.Val, cl.res.Err
	case queued:
		for i, p := range q.pending {
			if p == cl {
				q.pending = append(q.pending[:i], q.pending[i+1:]...)
				break
			}
		}
	default:
		cl.state = abandoned
	}
	var zero Out
	return zero, ctx.Err()
}

// run executes batch, then whatever queued meanwhile, until the queue of
// key is empty.
func (c *Coalescer[K, In, Out]) run(key K, q *queue[In, Out], batch []*call[In, Out]) {
	for {
		in := make([]In, len(batch))
		for i, cl := range batch {
			in[i] = cl.in
		}
		res := c.exec(context.WithoutCancel(batch[0].ctx), key, in)

		var unwanted []Out
		c.mu.Lock()
		for i, cl := range batch {
			var r Result[Out]
			if i < len(res) {
				r = res[i]
			} else {
				r.Err = errShortResult
			}
			if cl.state == abandoned {
				if r.Err == nil {
					unwanted = append(unwanted, r.Val)
				}
				continue
			}
			cl.res = r
			cl.state = delivered
			close(cl.done)
		}
		c.mu.Unlock()
		if c.discard != nil {
			for _, v := range unwanted {
				c.discard(v)
			}
		}

		if batch = c.next(key, q); batch == nil {
			return
		}
	}
}

// next takes the next batch of key's queue for a runner that has finished
// one; with nothing queued it gives up the runner's place and returns nil.
func (c *Coalescer[K, In, Out]) next(key K, q *queue[In, Out]) []*call[In, Out] {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(q.pending) == 0 {
		q.inFlight--
		if q.inFlight == 0 {
			delete(c.queues, key)
		}
		return nil
	}
	return c.take(q)
}

// take takes the next batch off q's queue, which is not empty; c.mu is
// held.
func (c *Coalescer[K, In, Out]) take(q *queue[In, Out]) []*call[In, Out] {
	n := min(len(q.pending), c.maxBatch)
	batch := make([]*call[In, Out], n)
	copy(batch, q.pending)
	q.pending = append(q.pending[:0], q.pending[n:]...)
	for _, cl := range batch {
		cl.state = sent
	}
	return batch
}

// errShortResult reports an Exec that returned fewer results than inputs.
var errShortResult = errors.New("batch: no result for this call")
