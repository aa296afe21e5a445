package open

import (
	"context"
	"strings"
	"testing"
)

// pgx takes the password from the query string or a key=value DSN too;
// Redact (logged at serve start) and Open's errors must hide it there.
func TestRedactHidesPasswordOutsideUserinfo(t *testing.T) {
	for _, raw := range []string{
		"postgres://u@h/db?sslmode=disable&password=s3cr3t",
		"postgres://u@h/db?PASSWORD=s3cr3t",
		"host=h user=u password=s3cr3t dbname=db",
		"host=h password='s3cr3t x' dbname=db",
	} {
		if got := Redact(raw); strings.Contains(got, "s3cr3t") {
			t.Errorf("Redact(%q) = %q, leaks the password", raw, got)
		}
	}
	if got := Redact("postgres://u@h/db?sslmode=disable"); got != "postgres://u@h/db?sslmode=disable" {
		t.Errorf("Redact changed a URL without a password: %q", got)
	}
	_, err := Open(context.Background(), "host=h password=s3cr3t")
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("Open(key=value DSN) error = %v; want an error without the password", err)
	}
}
