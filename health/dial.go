package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/proxy"

	"github.com/pharox/pharox"
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

// socks4Dialer is a SOCKS4/SOCKS4a client. golang.org/x/net/proxy speaks
// only SOCKS5 and no maintained SOCKS4 client resolves from the module
// proxy; the protocol is one request and one 8-byte reply, so it lives
// here. Host names are sent as SOCKS4a, letting the proxy resolve them.
type socks4Dialer struct {
	proxy   string
	user    string
	forward *net.Dialer
}

// SOCKS4 reply codes (second byte of the reply).
const (
	socks4Granted      = 0x5a
	socks4Rejected     = 0x5b
	socks4NoIdentd     = 0x5c
	socks4IdentFailed  = 0x5d
	socks4Version      = 0x04
	socks4CmdConnect   = 0x01
	socks4ReplyVersion = 0x00
)

// DialContext connects to addr through the proxy.
func (d *socks4Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" {
		return nil, fmt.Errorf("socks4: network %q not supported", network)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("socks4: target %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("socks4: target port %q invalid", portStr)
	}
	if strings.ContainsRune(d.user, 0) || strings.ContainsRune(host, 0) {
		return nil, errors.New("socks4: user id or host contains a NUL byte")
	}
	req := make([]byte, 0, 9+len(d.user)+len(host)+1)
	req = append(req, socks4Version, socks4CmdConnect, byte(port>>8), byte(port))
	ip := net.ParseIP(host)
	switch {
	case ip != nil && ip.To4() != nil:
		req = append(req, ip.To4()...)
		req = append(req, d.user...)
		req = append(req, 0)
	case ip != nil:
		return nil, fmt.Errorf("socks4: IPv6 target %s not supported by the protocol", host)
	default:
		// SOCKS4a: an invalid IP 0.0.0.x tells the proxy a host name follows.
		req = append(req, 0, 0, 0, 1)
		req = append(req, d.user...)
		req = append(req, 0)
		req = append(req, host...)
		req = append(req, 0)
	}

	conn, err := d.forward.DialContext(ctx, "tcp", d.proxy)
	if err != nil {
		return nil, err
	}
	if err := socks4Handshake(ctx, conn, req); err != nil {
		conn.Close()
		return nil, &handshakeError{err: fmt.Errorf("socks4 connect %s via %s: %w", addr, d.proxy, err)}
	}
	return conn, nil
}

func socks4Handshake(ctx context.Context, conn net.Conn, req []byte) (err error) {
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
		defer conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() {
			// ctx ended mid-handshake and pushed the deadline into the past.
			err = ctx.Err()
		}
	}()
	if _, err := conn.Write(req); err != nil {
		return err
	}
	var reply [8]byte
	if _, err := io.ReadFull(conn, reply[:]); err != nil {
		return err
	}
	if reply[0] != socks4ReplyVersion && reply[0] != socks4Version {
		return fmt.Errorf("unexpected reply version %d", reply[0])
	}
	switch reply[1] {
	case socks4Granted:
		return nil
	case socks4Rejected:
		return errors.New("request rejected or failed")
	case socks4NoIdentd, socks4IdentFailed:
		return errSOCKS4Ident
	}
	return fmt.Errorf("unknown reply code %#x", reply[1])
}

var errSOCKS4Ident = errors.New("request rejected: identd could not confirm the user id")

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
		case errors.Is(err, errSOCKS4Ident),
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
