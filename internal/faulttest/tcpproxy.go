package faulttest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TCPProxy forwards connections from its own loopback address to a
// target, and can slow them down, cut them, or hold every byte as a
// network partition would.
type TCPProxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	latency atomic.Int64 // nanoseconds added before each chunk is forwarded

	mu sync.Mutex
	// healed is closed when no partition is in place; a new channel is
	// made for each partition.
	healed chan struct{}
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	closed bool
}

// StartTCPProxy listens on 127.0.0.1 and forwards to target until t ends.
func StartTCPProxy(t testing.TB, target string) *TCPProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faulttest: proxy listen: %v", err)
	}
	p := &TCPProxy{t: t, ln: ln, target: target, healed: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.healed)
	p.wg.Go(p.accept)
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's address, host:port.
func (p *TCPProxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays every chunk of data, both ways, by d (0 removes it).
func (p *TCPProxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// DropAll resets every open connection, as a dying router or a firewall
// flushing its state would.
func (p *TCPProxy) DropAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN
		}
		_ = c.Close()
	}
}

// Partition holds every byte, both ways, on open and new connections, for
// d: nothing is lost, nothing arrives, as when packets are dropped and TCP
// retransmits. Then data flows again.
func (p *TCPProxy) Partition(d time.Duration) {
	p.mu.Lock()
	healed := make(chan struct{})
	p.healed = healed
	p.mu.Unlock()
	time.Sleep(d)
	close(healed)
}

// wait blocks while a partition is in place.
func (p *TCPProxy) wait() {
	p.mu.Lock()
	h := p.healed
	p.mu.Unlock()
	<-h
}

// Close stops the proxy and closes every connection.
func (p *TCPProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	_ = p.ln.Close()
	p.DropAll()
	p.wg.Wait()
}

func (p *TCPProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *TCPProxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	c.Close()
}

func (p *TCPProxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(in) })
	}
}

func (p *TCPProxy) serve(in net.Conn) {
	if !p.track(in) {
		return
	}
	defer p.untrack(in)
	p.wait()
	out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	if !p.track(out) {
		return
	}
	defer p.untrack(out)
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(out, in) })
	wg.Go(func() { p.pipe(in, out) })
	wg.Wait()
}

// pipe copies src to dst chunk by chunk, honouring latency and
// partitions, and closes both when either side ends.
func (p *TCPProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.wait()
			if d := time.Duration(p.latency.Load()); d > 0 {
				time.Sleep(d)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // io.EOF or a cut: either way the other side is done
			return
		}
	}
}
