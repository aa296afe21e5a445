package socks4

import (
	"bytes"
	"testing"
)

func TestRequest(t *testing.T) {
	for _, tc := range []struct {
		user, addr string
		want       []byte
	}{
		{"", "10.1.2.3:80", []byte{4, 1, 0, 80, 10, 1, 2, 3, 0}},
		{"bob", "10.1.2.3:443", []byte{4, 1, 1, 187, 10, 1, 2, 3, 'b', 'o', 'b', 0}},
		// SOCKS4a: 0.0.0.1, the user id, then the host name.
		{"u", "example.com:8080", append([]byte{4, 1, 0x1f, 0x90, 0, 0, 0, 1, 'u', 0}, append([]byte("example.com"), 0)...)},
	} {
		got, err := Request(tc.user, tc.addr)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("Request(%q, %q) = %v, %v; want %v", tc.user, tc.addr, got, err, tc.want)
		}
	}
	for _, bad := range []struct{ user, addr string }{
		{"", "[::1]:80"}, {"", "10.0.0.1:0"}, {"", "10.0.0.1:70000"}, {"a\x00b", "10.0.0.1:80"}, {"", "no-port"},
	} {
		if _, err := Request(bad.user, bad.addr); err == nil {
			t.Errorf("Request(%q, %q) succeeded", bad.user, bad.addr)
		}
	}
}
