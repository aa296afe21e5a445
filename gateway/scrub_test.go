package gateway

import (
	"net/url"
	"strings"
	"testing"

	"github.com/pharox/pharox"
)

// TestScrubHidesEveryPassword: reasons never carry the upstream password,
// in plain or escaped form, however short it is.
func TestScrubHidesEveryPassword(t *testing.T) {
	for _, tc := range []struct{ pw, reason string }{
		{"s3cr3t/pw", "dial http://u:s3cr3t/pw@10.0.0.1: refused"},
		{"s3cr3t/pw", "dial http://u:s3cr3t%2Fpw@10.0.0.1: refused"},
		{"a b&c", "proxy said a+b%26c is wrong"},
		{"x", "proxyconnect tcp: auth x rejected"},
		{"ab", "upstream ab: EOF"},
	} {
		p := &pharox.Proxy{Credentials: &pharox.Credentials{User: "u", Password: tc.pw}}
		got := scrub(tc.reason, p)
		if len(tc.pw) < 3 {
			if got != withheldReason {
				t.Errorf("scrub(%q) with the short password %q = %q, want it withheld", tc.reason, tc.pw, got)
			}
			continue
		}
		for _, form := range []string{tc.pw, url.QueryEscape(tc.pw), url.PathEscape(tc.pw)} {
			if strings.Contains(got, form) {
				t.Errorf("scrub(%q) with password %q = %q: still contains %q", tc.reason, tc.pw, got, form)
			}
		}
	}
	// A short password that does not occur leaves the reason alone.
	p := &pharox.Proxy{Credentials: &pharox.Credentials{User: "u", Password: "q"}}
	if got := scrub("connection refused", p); got != "connection refused" {
		t.Errorf("scrub changed a reason without the password: %q", got)
	}
}
