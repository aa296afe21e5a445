package mysql

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain closes the tests' shared admin pool after them and then fails
// the run if any goroutine outlived the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if adminDB != nil {
		_ = adminDB.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines outlived the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
