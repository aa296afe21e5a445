package main

import (
	"bytes"
	"context"
	"os"
	"runtime/debug"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// envRunAsPharox makes the test binary run as the pharox command itself,
// with its arguments: tests start real `pharox serve` processes so.
const envRunAsPharox = "PHAROX_TEST_RUN_AS_PHAROX"

// TestMain fails the package's tests if any goroutine outlives them.
func TestMain(m *testing.M) {
	if os.Getenv(envRunAsPharox) == "1" {
		main()
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// runRoot runs the real command tree, prepared as main prepares it.
func runRoot(t *testing.T, args ...string) (string, error) {
	t.Helper()
	prepareCommands(rootCmd)
	var out bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetErr(&out)
	rootCmd.SetArgs(args)
	t.Cleanup(func() { rootCmd.SetArgs(nil); rootCmd.SetOut(nil); rootCmd.SetErr(nil) })
	err := rootCmd.ExecuteContext(context.Background())
	return out.String(), err
}

// `pharox pool lst` printed the pool help and exited 0; unknown commands
// and other usage errors exit 2 with one line now.
func TestUnknownCommandsAreUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"pool", "lst"}, {"lst"}, {"proxy", "imprt"}, {"lease", "x"}, {"stats", "--bogus"}, {"pool", "create"}} {
		_, err := runRoot(t, args...)
		if err == nil || exitCode(err) != 2 {
			t.Errorf("pharox %s: err %v (exit %d), want a usage error (exit 2)", strings.Join(args, " "), err, exitCodeOf(err))
		}
	}
	_, err := runRoot(t, "pool", "lst")
	if err == nil || !strings.Contains(err.Error(), `unknown command "lst" for "pharox pool"`) || !strings.Contains(err.Error(), `did you mean "list"`) {
		t.Fatalf("pharox pool lst: %v", err)
	}
	// A group alone still shows its help, successfully.
	if out, err := runRoot(t, "pool"); err != nil || !strings.Contains(out, "Available Commands") {
		t.Fatalf("pharox pool: %v\n%s", err, out)
	}
}

func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	return exitCode(err)
}

// `pharox version` and `pharox --version` print the build information.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, err := runRoot(t, args...)
		if err != nil {
			t.Fatalf("pharox %s: %v", args[0], err)
		}
		for _, want := range []string{"pharox ", "revision: ", "go: go1."} {
			if !strings.Contains(out, want) {
				t.Errorf("pharox %s = %q, want it to contain %q", args[0], out, want)
			}
		}
	}
	bi := &debug.BuildInfo{GoVersion: "go1.99.0", Main: debug.Module{Path: "github.com/pharox/pharox", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "true"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}}}
	got := versionText(bi, true)
	for _, want := range []string{"pharox v1.2.3\n", "module: github.com/pharox/pharox\n", "revision: 0123abcd (with uncommitted changes)\n", "commit time: 2026-01-02T03:04:05Z\n", "go: go1.99.0 "} {
		if !strings.Contains(got, want) {
			t.Errorf("versionText = %q, want it to contain %q", got, want)
		}
	}
}

// A missing pool read `pharox: pool "nosuch": pharox: pool not found`: the
// library's sentinel prefix showed inside the CLI's line. Same for the
// lines of an import.
func TestErrorLineSaysPharoxOnce(t *testing.T) {
	dir := t.TempDir()
	storage := "sqlite://" + dir + "/pharox.db"
	if _, err := runRoot(t, "pool", "create", "main", "--storage", storage); err != nil {
		t.Fatal(err)
	}
	_, err := runRoot(t, "pool", "delete", "nosuch", "--storage", storage)
	if err == nil {
		t.Fatal("deleting a missing pool succeeded")
	}
	if got, want := errorLine(err), `pharox: pool "nosuch": pool not found`; got != want {
		t.Errorf("error line %q, want %q", got, want)
	}
	list := dir + "/bad.txt"
	if err := os.WriteFile(list, []byte("no port here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runRoot(t, "proxy", "import", "--pool", "main", "--storage", storage, list)
	if err == nil {
		t.Fatal("importing a bad line succeeded")
	}
	if strings.Contains(out, "pharox: invalid argument") || !strings.Contains(out, "bad.txt:1: invalid argument: missing port") {
		t.Errorf("import report:\n%s", out)
	}
}
