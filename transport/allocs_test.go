package transport

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"testing"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/memory"
)

func TestAllocsDbg(t *testing.T) {
	tg := newTarget(t)
	up := startHTTPUpstream(t, "127.0.1.9")
	store := memory.New()
	ctx := context.Background()
	pool, _ := pharox.BootstrapPool(ctx, store, "main", "")
	host, port, _ := net.SplitHostPort(up.addr)
	n, _ := strconv.Atoi(port)
	pharox.BootstrapProxy(ctx, store, pool, pharox.Proxy{Host: host, Port: n, Protocol: pharox.ProtocolHTTP, Credentials: alice()})
	mgr := pharox.NewManager(store)
	base := defaultBase()
	fixed := base.Clone()
	fixed.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: up.addr, User: url.UserPassword(upUser, upPass)})
	rt, _ := New(Local(mgr), "main", WithBaseTransport(base), WithLogger(quietLogger()))
	for _, c := range []*http.Client{{Transport: fixed}, {Transport: rt}} {
		get := func() {
			resp, _ := c.Get(tg.plain.URL)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		get()
		t.Logf("%T allocs %v", c.Transport, testing.AllocsPerRun(200, get))
	}
	l, _ := mgr.Acquire(ctx, "main", nil)
	t.Logf("acquire+release allocs %v", testing.AllocsPerRun(200, func() {
		l, _ = mgr.AcquireWait(ctx, "main", &pharox.AcquireOptions{})
		mgr.Release(ctx, l.ID)
	}))
	rt.CloseIdleConnections(); fixed.CloseIdleConnections(); store.Close()
}
