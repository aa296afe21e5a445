package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
)

func TestMigrateCommand(t *testing.T) {
	t.Setenv(envStorage, "")
	runArgs := func(stdin string, args ...string) (string, string, error) {
		root := &cobra.Command{Use: "pharox", SilenceUsage: true, SilenceErrors: true}
		root.AddCommand(newMigrateCmd())
		var out, errb bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&errb)
		root.SetArgs(args)
		err := root.ExecuteContext(context.Background())
		return out.String(), errb.String(), err
	}
	url := "sqlite://" + filepath.Join(t.TempDir(), "m.db")
	out, _, err := runArgs("", "migrate", "--store", url, "--print")
	if err != nil || !strings.Contains(out, "-- 0001_init.sql") {
		t.Fatalf("migrate --print on a new file: %q, %v", out, err)
	}
	if out, _, err = runArgs("", "migrate", "--storage", url); err != nil || !strings.Contains(out, "schema up to date") {
		t.Fatalf("migrate: %q, %v", out, err)
	}
	if out, _, err = runArgs("", "migrate", "--store", url, "--print"); err != nil || !strings.Contains(out, "No pending migration") {
		t.Fatalf("migrate --print after migrate: %q, %v", out, err)
	}
	if out, _, err = runArgs("", "migrate", "--store", "memory://"); err != nil || !strings.Contains(out, "nothing to migrate") {
		t.Fatalf("migrate memory://: %q, %v", out, err)
	}
	if _, _, err = runArgs("", "migrate"); !errors.Is(err, pharox.ErrInvalidArgument) || !strings.Contains(err.Error(), "--storage") {
		t.Fatalf("migrate without a URL: %v", err)
	}
}
