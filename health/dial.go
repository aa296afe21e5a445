package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/proxy"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/socks4"
)

// dialFunc is the shape of http.Transport.DialContext.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// handshakeError is a failure after the TCP connection to a SOCKS proxy was
// established: the proxy is up but would not (or could not) relay.
type handshakeError struct{ err error }

func (e *handshakeError) Error() string { return e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// socks5Dialer returns a dial function that tunnels through the SOCKS5 proxy
// p with golang.org/x/net/proxy, authenticating with p's credentials.
func socks5Dialer(p *pharox.Proxy, forward *net.Dialer) (dialFunc, error) {
	var auth *proxy.Auth
	if p.Credentials != nil && (p.Credentials.User != "" || p.Credentials.Password != "") {
		auth = &proxy.Auth{User: p.Credentials.User, Password: p.Credentials.Password}
	}
	var reached atomic.Bool
	fwd := &stageDialer{d: forward, reached: &reached}
	d, err := proxy.SOCKS5("tcp", p.Address(), auth, fwd)
	if err != nil {
		return nil, fmt.Errorf("socks5 dialer: %w", err)
	}
	cd, ok := d.(proxy.ContextDialer)
	if !ok {
		return nil, errors.New("socks5 dialer does not support contexts")
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := cd.DialContext(ctx, network, addr)
		if err != nil && reached.Load() {
			return nil, &handshakeError{err: err}
		}
		return c, err
	}, nil
}

// stageDialer records whether the TCP connection to the proxy succeeded, so
// that later failures can be told apart from an unreachable proxy.
type stageDialer struct {
	d       *net.Dialer
	reached *atomic.Bool
}

func (s *stageDialer) Dial(network, addr string) (net.Conn, error) {
	return s.DialContext(context.Background(), network, addr)
}

func (s *stageDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := s.d.DialContext(ctx, network, addr)
	if err == nil {
		s.reached.Store(true)
	}
	return c, err
}

// socks4User is the SOCKS4 user id: SOCKS4 has no password, only an id.
func socks4User(p *pharox.Proxy) string {
	if p.Credentials == nil {
		return ""
	}
	return p.Credentials.User
}

// socks4Dialer returns a dial function that tunnels through the SOCKS4
// proxy p (internal/socks4), with p's user id.
func socks4Dialer(p *pharox.Proxy, forward *net.Dialer) dialFunc {
	var reached atomic.Bool
	d := &socks4.Dialer{Proxy: p.Address(), User: socks4User(p), Forward: &stageDialer{d: forward, reached: &reached}}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil && reached.Load() {
			return nil, &handshakeError{err: fmt.Errorf("socks4 connect %s via %s: %w", addr, d.Proxy, err)}
		}
		return c, err
	}
}

// classifyError maps a transport error to an ErrorKind. Order matters:
// proxy protocol answers first, then TLS, then the network failure class.
func classifyError(err error) ErrorKind {
	var ce *connectError
	if errors.As(err, &ce) {
		if ce.code == 407 {
			return KindProxyAuth
		}
		return KindProxyError
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT) {
		return KindTimeout
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return KindTimeout
	}
	if errors.Is(err, context.Canceled) {
		return KindCanceled
	}
	var hs *handshakeError
	inHandshake := errors.As(err, &hs)
	if inHandshake {
		msg := hs.err.Error()
		switch {
		case errors.Is(err, socks4.ErrIdent),
			strings.Contains(msg, "authentication"),
			strings.Contains(msg, "username/password"):
			return KindProxyAuth
		case isReset(err):
			return KindReset
		}
		return KindProxyError
	}
	if isTLS(err) {
		return KindTLS
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return KindRefused
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return KindDNS
	}
	if isReset(err) {
		return KindReset
	}
	return KindOther
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		strings.Contains(err.Error(), "server closed") ||
		strings.Contains(err.Error(), "connection reset")
}

func isTLS(err error) bool {
	var (
		rh    tls.RecordHeaderError
		rhp   *tls.RecordHeaderError
		ve    *tls.CertificateVerificationError
		ua    x509.UnknownAuthorityError
		he    x509.HostnameError
		ci    x509.CertificateInvalidError
		alert tls.AlertError
		ech   *tls.ECHRejectionError
	)
	if errors.As(err, &rh) || errors.As(err, &rhp) || errors.As(err, &ve) || errors.As(err, &ua) ||
		errors.As(err, &he) || errors.As(err, &ci) || errors.As(err, &alert) || errors.As(err, &ech) {
		return true
	}
	return strings.Contains(err.Error(), "tls: ")
}
