//go:build unix

package main

import (
	"fmt"
	"strings"
	"testing"
)

// TestExitCodeWhenStorageUnreachable checks that a command whose store
// cannot be reached exits with 75 (retry later) and says so, and that
// other failures keep exit code 1.
func TestExitCodeWhenStorageUnreachable(t *testing.T) {
	port := refusedPort(t) // nothing listens there

	for _, tc := range []struct {
		name string
		args []string
		what string // what the hint says is down
	}{
		{"postgres", []string{"pool", "list", "--storage", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/db?sslmode=disable&connect_timeout=5", port)}, "the store"},
		{"redis", []string{"pool", "list", "--storage", fmt.Sprintf("redis://127.0.0.1:%d/0", port)}, "the store"},
		// It said "the store is unreachable" when the server was.
		{"server", []string{"pool", "list", "--server", fmt.Sprintf("http://127.0.0.1:%d", port), "--api-key", "k"}, "the server is unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runArgs("", tc.args...)
			if err == nil {
				t.Fatal("the command succeeded with nothing listening")
			}
			if got := exitCode(err); got != exitUnavailable {
				t.Errorf("exit code %d for %v, want %d", got, err, exitUnavailable)
			}
			if hint := unavailableHint(err); !strings.Contains(hint, "temporarily unavailable ("+tc.what) {
				t.Errorf("hint %q for %v", hint, err)
			}
		})
	}

	_, _, err := runArgs("", "pool", "list", "--storage", "nosuch://x")
	if err == nil || exitCode(err) != exitFailure || unavailableHint(err) != "" {
		t.Errorf("a bad storage URL: err %v, exit code %d, hint %q", err, exitCode(err), unavailableHint(err))
	}
}

// A --server URL with credentials was refused with the Go client's
// advice ("use WithAPIKey"); the CLI names its flag, and hides the
// password.
func TestServerURLWithCredentials(t *testing.T) {
	_, _, err := runArgs("", "pool", "list", "--server", "http://u:hunter2@127.0.0.1:1", "--api-key", "k")
	if err == nil {
		t.Fatal("a --server URL with credentials was accepted")
	}
	if msg := err.Error(); !strings.Contains(msg, "--api-key") || strings.Contains(msg, "hunter2") || strings.Contains(msg, "WithAPIKey") {
		t.Errorf("error %q: want the --api-key advice without the password", msg)
	}
}
