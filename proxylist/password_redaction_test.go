package proxylist

import (
	"strings"
	"testing"
)

// A user:pass@host line without a usable port falls through to the
// scheme-less host:port parser; its error must not quote the password.
func TestParseLineErrorOmitsPasswordWithoutPort(t *testing.T) {
	for _, line := range []string{
		"alice:s3cr3tpw@proxy.example.com",
		"alice:s3cr3tpw@proxy.example.com:80:extra",
		"alice:s3cr3tpw:x:y@proxy.example.com",
	} {
		_, ok, err := ParseLine(line, ParseOptions{})
		if err == nil || ok {
			t.Fatalf("ParseLine(%q) = ok %v, err %v; want an error", line, ok, err)
		}
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("ParseLine(%q) error leaks the password: %v", line, err)
		}
	}
}
