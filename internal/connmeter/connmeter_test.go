package connmeter

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
)

// pipe returns a counted connection for dial and its peer.
func pipe(t *testing.T, dial *Meter) (*Conn, net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return New(a, dial), b
}

// send writes n bytes on c and reads them on peer.
func send(t *testing.T, c, peer net.Conn, n int) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, peer, int64(n))
		done <- err
	}()
	if _, err := c.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// recv writes n bytes on peer and reads them on c.
func recv(t *testing.T, c, peer net.Conn, n int) {
	t.Helper()
	go func() { _, _ = peer.Write(make([]byte, n)) }()
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
}

func check(t *testing.T, name string, m *Meter, sent, received int64) {
	t.Helper()
	if s, r := m.Seal(); s != sent || r != received {
		t.Errorf("%s counted %d sent, %d received; want %d, %d", name, s, r, sent, received)
	}
}

// The dial's bytes count for the request it was dialed for; bytes after
// a meter is sealed wait for the next request that attaches.
func TestCountsPerRequest(t *testing.T) {
	var dialer, first, second Meter
	c, peer := pipe(t, &dialer)
	send(t, c, peer, 3) // a handshake, before any request has the connection
	recv(t, c, peer, 2)
	c.Attach(&first)
	send(t, c, peer, 100)
	recv(t, c, peer, 1000)
	check(t, "dialer", &dialer, 3, 2)
	check(t, "first", &first, 100, 1000)
	send(t, c, peer, 7) // after the first request's release
	c.Attach(&second)
	recv(t, c, peer, 5)
	check(t, "second", &second, 7, 5)
	if s, r := first.Seal(); s != 0 || r != 0 {
		t.Errorf("a meter sealed twice gave %d, %d", s, r)
	}
}

// Bytes that find the dial's meter sealed go to the first request that
// attaches.
func TestDialAfterSeal(t *testing.T) {
	var dialer, next Meter
	dialer.Seal()
	c, peer := pipe(t, &dialer)
	send(t, c, peer, 40)
	c.Attach(&next)
	check(t, "next", &next, 40, 0)
}

// A failed write takes back what it could not write.
func TestFailedWrite(t *testing.T) {
	var m Meter
	c, peer := pipe(t, nil)
	c.Attach(&m)
	peer.Close()
	if _, err := c.Write(make([]byte, 10)); err == nil {
		t.Fatal("write to a closed pipe succeeded")
	}
	check(t, "meter", &m, 0, 0)
}

// Of finds the counted connection under TLS and under Over, and a
// detached connection counts for no one.
func TestOf(t *testing.T) {
	c, _ := pipe(t, nil)
	if Of(c) != c || Of(tls.Client(c, &tls.Config{})) != c || Of(tls.Client(Over(c, c), &tls.Config{})) != c {
		t.Error("Of did not find the counted connection")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Of(a) != nil {
		t.Error("Of found a counted connection in a plain one")
	}
	var m Meter
	c2, peer := pipe(t, nil)
	c2.Attach(&m)
	c2.Detach()
	send(t, c2, peer, 9)
	check(t, "detached", &m, 0, 0)
}
