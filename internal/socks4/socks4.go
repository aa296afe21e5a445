// Package socks4 is a SOCKS4/SOCKS4a client, shared by the health checker
// and the gateway. golang.org/x/net/proxy speaks only SOCKS5 and no
// maintained SOCKS4 client resolves from the module proxy; the protocol is
// one request and one 8-byte reply. Host names are sent as SOCKS4a, so the
// proxy resolves them.
package socks4

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Errors a proxy's reply can carry.
var (
	ErrRejected = errors.New("socks4: request rejected or failed")
	ErrIdent    = errors.New("socks4: identd could not confirm the user id")
)

// Protocol bytes.
const (
	version      = 0x04
	cmdConnect   = 0x01
	replyVersion = 0x00
	granted      = 0x5a
	rejected     = 0x5b
	noIdentd     = 0x5c
	identFailed  = 0x5d
)

// Request returns the CONNECT request for addr ("host:port") with the user
// id user, or an error for a target SOCKS4 cannot express.
func Request(user, addr string) ([]byte, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("socks4: target %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("socks4: target port %q invalid", portStr)
	}
	if strings.ContainsRune(user, 0) || strings.ContainsRune(host, 0) {
		return nil, errors.New("socks4: user id or host contains a NUL byte")
	}
	req := make([]byte, 0, 9+len(user)+len(host)+1)
	req = append(req, version, cmdConnect, byte(port>>8), byte(port))
	ip := net.ParseIP(host)
	switch {
	case ip != nil && ip.To4() != nil:
		req = append(req, ip.To4()...)
		req = append(req, user...)
		req = append(req, 0)
	case ip != nil:
		return nil, fmt.Errorf("socks4: IPv6 target %s not supported by the protocol", host)
	default:
		// SOCKS4a: an invalid IP 0.0.0.x tells the proxy a host name follows.
		req = append(req, 0, 0, 0, 1)
		req = append(req, user...)
		req = append(req, 0)
		req = append(req, host...)
		req = append(req, 0)
	}
	return req, nil
}

// Exchange sends req over conn, a connection to the proxy, and reads the
// reply. ctx bounds the exchange; conn has no deadline afterwards.
func Exchange(ctx context.Context, conn net.Conn, req []byte) (err error) {
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
		defer conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() {
			// ctx ended mid-exchange and pushed the deadline into the past.
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
	if reply[0] != replyVersion && reply[0] != version {
		return fmt.Errorf("socks4: unexpected reply version %d", reply[0])
	}
	switch reply[1] {
	case granted:
		return nil
	case rejected:
		return ErrRejected
	case noIdentd, identFailed:
		return ErrIdent
	}
	return fmt.Errorf("socks4: unknown reply code %#x", reply[1])
}

// Dialer connects through a SOCKS4 proxy.
type Dialer struct {
	Proxy   string // the proxy's host:port
	User    string // the SOCKS4 user id (SOCKS4 has no password)
	Forward interface {
		DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	}
}

// DialContext connects to addr through the proxy.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" {
		return nil, fmt.Errorf("socks4: network %q not supported", network)
	}
	req, err := Request(d.User, addr)
	if err != nil {
		return nil, err
	}
	conn, err := d.Forward.DialContext(ctx, "tcp", d.Proxy)
	if err != nil {
		return nil, err
	}
	if err := Exchange(ctx, conn, req); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}
