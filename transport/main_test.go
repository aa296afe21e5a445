package transport

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: every
// per-proxy transport, upstream and renewal timer must be gone.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
