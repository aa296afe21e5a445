package server

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/pharox/pharox/internal/mongotest"
)

// TestMain fails the package's tests if any goroutine outlives them, and
// stops the FerretDB the MongoDB tests may have started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		mongotest.Stop()
		os.Exit(code)
	}))
}
