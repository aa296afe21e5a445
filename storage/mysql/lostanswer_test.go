package mysql

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/google/uuid"

	"github.com/pharox/pharox"
)

// commitCutter is a TCP forwarder between the driver and the server that,
// when armed, passes the next COMMIT on to the server and then cuts the
// client's connection: the transaction commits, and the client never hears
// so. That is the answer a driver loses when a connection breaks at the
// worst moment.
type commitCutter struct {
	ln     net.Listener
	target string
	armed  atomic.Bool
	cut    atomic.Int32
	// match, when set, cuts after the next query that contains it
	// instead of after a COMMIT.
	match atomic.Pointer[string]
	wg    sync.WaitGroup
}

func newCommitCutter(t *testing.T, target string) *commitCutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &commitCutter{ln: ln, target: target}
	c.wg.Go(c.accept)
	t.Cleanup(func() { ln.Close(); c.wg.Wait() })
	return c
}

func (c *commitCutter) accept() {
	for {
		client, err := c.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", c.target)
		if err != nil {
			client.Close()
			continue
		}
		cutting := new(atomic.Bool)
		c.wg.Go(func() {
			// Server to client. Once the client side decided to cut,
			// the server's next answer is read (the server has then
			// done the work) and dropped, and both sides are closed.
			buf := make([]byte, 32<<10)
			for {
				n, err := server.Read(buf)
				if cutting.Load() || err != nil {
					break
				}
				if _, err := client.Write(buf[:n]); err != nil {
					break
				}
			}
			client.Close()
			server.Close()
		})
		c.wg.Go(func() { c.clientToServer(client, server, cutting) })
	}
}

// clientToServer forwards MySQL packets (3-byte length, sequence byte,
// payload) and cuts the client after an armed match: by default a query
// ending in COMMIT.
func (c *commitCutter) clientToServer(client, server net.Conn, cutting *atomic.Bool) {
	defer client.Close()
	hdr := make([]byte, 4)
	for {
		if _, err := io.ReadFull(client, hdr); err != nil {
			server.Close()
			return
		}
		n := int(binary.LittleEndian.Uint32(append(hdr[:3:3], 0)))
		payload := make([]byte, n)
		if _, err := io.ReadFull(client, payload); err != nil {
			server.Close()
			return
		}
		query := len(payload) > 0 && payload[0] == 3
		hit := query && strings.HasSuffix(string(payload), "COMMIT")
		if m := c.match.Load(); m != nil {
			hit = query && strings.Contains(string(payload), *m)
		}
		// Decided before the query reaches the server, so that its
		// answer can never slip through to the client.
		cut := hit && c.armed.CompareAndSwap(true, false)
		if cut {
			cutting.Store(true)
			c.cut.Add(1)
		}
		if _, err := server.Write(append(hdr, payload...)); err != nil {
			server.Close()
			return
		}
		if cut {
			// The copier closes the server side once the answer came.
			return
		}
	}
}

// lostAnswerStore opens a store whose connections go through a
// commitCutter.
func lostAnswerStore(t *testing.T) (*Store, *commitCutter) {
	t.Helper()
	cfg, err := mysql.ParseDSN(testDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	cutter := newCommitCutter(t, cfg.Addr)
	cfg.Addr = cutter.ln.Addr().String()
	prefix := uniquePrefix()
	dropTablesOnCleanup(t, prefix)
	s, err := Open(context.Background(), cfg.FormatDSN(), WithTablePrefix(prefix), WithMaxConns(4))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, cutter
}

// TestAcquireLostCommitAnswer cuts the connection right after the COMMIT
// of an acquisition: AcquireLease must return the lease it committed, and
// the retry must not take a second slot.
func TestAcquireLostCommitAnswer(t *testing.T) {
	s, cutter := lostAnswerStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "lost"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.0.0.1", Port: 1, Protocol: pharox.ProtocolHTTP}}); err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	cutter.armed.Store(true)
	l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "lost", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable})
	if cutter.cut.Load() != 1 {
		t.Fatalf("the forwarder cut %d COMMITs, want 1", cutter.cut.Load())
	}
	if err != nil {
		t.Fatalf("AcquireLease after its COMMIT answer was lost: %v", err)
	}
	leases, err := s.ListLeases(ctx, pharox.LeaseQuery{PoolID: pool.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 1 || leases[0].ID != l.ID {
		t.Fatalf("stored leases %v, want exactly the returned lease %s", leaseIDs(leases), l.ID)
	}
	if p, err := s.GetProxy(ctx, l.ProxyID); err != nil || p.CurrentLeases != 1 {
		t.Fatalf("proxy after the retried acquisition: %v, %v; want CurrentLeases 1", p, err)
	}
}

// TestReleaseLostCommitAnswer does the same to a release: ReleaseLease
// returns the released lease, not ErrLeaseNotActive from its own retry.
func TestReleaseLostCommitAnswer(t *testing.T) {
	s, cutter := lostAnswerStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "lost"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddProxies(ctx, []pharox.Proxy{{PoolID: pool.ID, Host: "10.0.0.1", Port: 1, Protocol: pharox.ProtocolHTTP}}); err != nil {
		t.Fatal(err)
	}
	c, err := s.EnsureConsumer(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.AcquireLease(ctx, pharox.AcquireRequest{PoolName: "lost", ConsumerID: c.ID, Duration: time.Minute, Strategy: pharox.FirstAvailable})
	if err != nil {
		t.Fatal(err)
	}
	cutter.armed.Store(true)
	got, err := s.ReleaseLease(ctx, l.ID, nil)
	if cutter.cut.Load() != 1 {
		t.Fatalf("the forwarder cut %d COMMITs, want 1", cutter.cut.Load())
	}
	if err != nil {
		t.Fatalf("ReleaseLease after its COMMIT answer was lost: %v", err)
	}
	if got.Status != pharox.LeaseReleased || got.ReleasedAt == nil {
		t.Fatalf("ReleaseLease returned %+v, want the released lease", got)
	}
	if p, err := s.GetProxy(ctx, l.ProxyID); err != nil || p.CurrentLeases != 0 {
		t.Fatalf("proxy after the retried release: %v, %v; want CurrentLeases 0", p, err)
	}
	if _, err := s.ReleaseLease(ctx, l.ID, nil); !errors.Is(err, pharox.ErrLeaseNotActive) {
		t.Fatalf("a second ReleaseLease: %v, want ErrLeaseNotActive", err)
	}
}

func leaseIDs(ls []*pharox.Lease) []uuid.UUID {
	out := make([]uuid.UUID, len(ls))
	for i, l := range ls {
		out[i] = l.ID
	}
	return out
}

// TestLostConnectionIsRecognisable cuts the connection under a plain read:
// the error matches io.ErrUnexpectedEOF, so that the server, which does
// not import the driver, answers 503 rather than 500.
func TestLostConnectionIsRecognisable(t *testing.T) {
	s, cutter := lostAnswerStore(t)
	ctx := context.Background()
	pool, err := s.CreatePool(ctx, pharox.Pool{Name: "lost"})
	if err != nil {
		t.Fatal(err)
	}
	match := "FROM " + s.cfg.prefix + "pools WHERE id"
	cutter.match.Store(&match)
	cutter.armed.Store(true)
	_, err = s.GetPool(ctx, pool.ID)
	if cutter.cut.Load() != 1 {
		t.Fatalf("the forwarder cut %d queries, want 1", cutter.cut.Load())
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) || !errors.Is(err, mysql.ErrInvalidConn) {
		t.Fatalf("GetPool on a connection cut under it: %v; want an error matching io.ErrUnexpectedEOF and mysql.ErrInvalidConn", err)
	}
	// The pool replaces the broken connection.
	if _, err := s.GetPool(ctx, pool.ID); err != nil {
		t.Fatalf("GetPool after the cut: %v", err)
	}
}

// TestServerRefusalsAreOutages checks that the server's answers meaning
// "not now" (too many connections, read-only, lock waits and deadlocks
// that outlived the retries, an idle disconnect) match
// pharox.ErrUnavailable, which the service answers with 503, and that
// other server errors do not.
func TestServerRefusalsAreOutages(t *testing.T) {
	for _, n := range []uint16{1040, 1205, 1213, 1290, 1836, 4031} {
		err := fail("acquire: %w", &mysql.MySQLError{Number: n, Message: "refused"})
		if !errors.Is(err, pharox.ErrUnavailable) {
			t.Errorf("server error %d: %v does not match ErrUnavailable", n, err)
		}
	}
	if err := fail("acquire: %w", &mysql.MySQLError{Number: 1062, Message: "duplicate"}); errors.Is(err, pharox.ErrUnavailable) {
		t.Errorf("duplicate key error %v matches ErrUnavailable", err)
	}
}
