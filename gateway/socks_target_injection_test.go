package gateway

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/internal/testpeers"
)

// A SOCKS5 client chooses the target name byte by byte; a name with a line
// break must not reach the upstream's CONNECT request, where it would add
// headers or whole requests of the client's choosing (ahead of the
// upstream's Proxy-Authorization).
func TestSOCKS5TargetNameCannotInjectIntoUpstreamConnect(t *testing.T) {
	e := newEnv(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				var buf bytes.Buffer
				br := bufio.NewReader(c)
				for !strings.HasSuffix(buf.String(), "\r\n\r\n") {
					b, err := br.ReadByte()
					if err != nil {
						break
					}
					buf.WriteByte(b)
				}
				got <- buf.String()
				io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
			}()
		}
	}()
	e.add(0, &pharox.Credentials{User: "up", Password: "upstream-secret"},
		&testpeers.Upstream{IP: "127.0.0.1", Addr: ln.Addr().String(), Proto: pharox.ProtocolHTTP})

	c, err := net.Dial("tcp", e.socks)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	name := "example.com\r\nX-Injected: 1\r\n\r\nGET http://evil.example/ HTTP/1.1\r\nX-A: a"
	req := []byte{5, 1, 0} // greeting: no auth
	req = append(req, 5, 1, 0, 3, byte(len(name)))
	req = append(req, name...)
	req = binary.BigEndian.AppendUint16(req, 80)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 4)
	io.ReadFull(c, reply[:2]) // method choice
	io.ReadFull(c, reply)     // CONNECT reply
	// The fake upstream reports what it read before it answers, so by the
	// time the gateway has replied, any upstream request is in got.
	select {
	case head := <-got:
		if strings.Contains(head, "X-Injected") || strings.Contains(head, "evil.example") {
			t.Fatalf("upstream received injected lines:\n%s", head)
		}
	default:
	}
	if reply[1] == 0 {
		t.Fatalf("gateway answered success (reply % x) for a target with line breaks", reply)
	}
}
