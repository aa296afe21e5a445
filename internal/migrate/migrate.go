package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

// ErrSchemaTooNew means the database was migrated by a newer pharox than
// this one: stores refuse it rather than run statements written for an
// older layout. Each store's ErrSchemaTooNew is this value.
var ErrSchemaTooNew = errors.New("schema is newer than this pharox")

// ErrSchemaTooOld means the database lacks migrations this binary needs:
// a store's constructor returns it when the caller has not migrated.
var ErrSchemaTooOld = errors.New("schema is older than this pharox")

// Migration is one embedded migration file.
type Migration struct {
	// Version is the file's number, from 1.
	Version int
	// File is the file's name, NNNN_description.sql.
	File string
	// Description is the part of the name between the number and ".sql".
	Description string
	// SQL is the file's content.
	SQL string
}

// Load reads the *.sql files of dir in fsys (an embed.FS, usually) and
// returns them by version. Every file must be named NNNN_description.sql,
// and the numbers must run from 1 with no gap and no repeat.
func Load(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		num, desc, ok := strings.Cut(strings.TrimSuffix(e.Name(), ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v < 1 || desc == "" {
			return nil, fmt.Errorf("migrations: file %s is not named NNNN_description.sql", e.Name())
		}
		body, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("migrations: %w", err)
		}
		out = append(out, Migration{Version: v, File: e.Name(), Description: desc, SQL: string(body)})
	}
	slices.SortFunc(out, func(a, b Migration) int { return a.Version - b.Version })
	for i, m := range out {
		switch {
		case i > 0 && m.Version == out[i-1].Version:
			return nil, fmt.Errorf("migrations: files %s and %s have the same number %d", out[i-1].File, m.File, m.Version)
		case m.Version != i+1:
			return nil, fmt.Errorf("migrations: file %s is number %d, want %d: migrations are numbered from 1 without gaps", m.File, m.Version, i+1)
		}
	}
	return out, nil
}

// MustLoad is Load for a store's embedded files, which a test of the store
// checks: it panics on an error.
func MustLoad(fsys fs.FS, dir string) []Migration {
	ms, err := Load(fsys, dir)
	if err != nil {
		panic(err)
	}
	return ms
}

// Latest is the version the migrations bring a database to, 0 for none.
func Latest(ms []Migration) int {
	if len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].Version
}

// Pending returns the migrations a database at version current lacks.
// what names the database in errors ("schema pharox", "tables pharox_*").
// A current version above the latest is refused with ErrSchemaTooNew.
func Pending(ms []Migration, current int, what string) ([]Migration, error) {
	latest := Latest(ms)
	if current > latest {
		return nil, fmt.Errorf("%w: %s is at schema version %d, this pharox knows versions up to %d: upgrade pharox", ErrSchemaTooNew, what, current, latest)
	}
	if current < 0 {
		current = 0
	}
	return ms[current:], nil
}

// Check compares the version a store's constructor found with the one it
// needs: nil when equal, ErrSchemaTooOld (telling to migrate, with hint
// naming how) or ErrSchemaTooNew otherwise, each naming both versions.
func Check(ms []Migration, current int, what, hint string) error {
	latest := Latest(ms)
	switch {
	case current > latest:
		_, err := Pending(ms, current, what)
		return err
	case current < latest:
		return fmt.Errorf("%w: %s is at schema version %d, this pharox needs %d: %s", ErrSchemaTooOld, what, current, latest, hint)
	}
	return nil
}

// Target is one database as a store migrates it, inside the store's own
// lock and transaction.
type Target interface {
	// Version returns the highest applied migration, 0 for none.
	Version(ctx context.Context) (int, error)
	// Apply runs m and records it as applied.
	Apply(ctx context.Context, m Migration) error
}

// Run applies to t the migrations it lacks, in order, and returns them.
// what names the database in errors.
func Run(ctx context.Context, ms []Migration, t Target, what string) ([]Migration, error) {
	current, err := t.Version(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the schema version of %s: %w", what, err)
	}
	pending, err := Pending(ms, current, what)
	if err != nil {
		return nil, err
	}
	for i, m := range pending {
		if err := t.Apply(ctx, m); err != nil {
			return pending[:i], fmt.Errorf("apply %s to %s: %w", m.File, what, err)
		}
	}
	return pending, nil
}

// Write prints ms as one SQL script: header (the statements that create
// the version table, say) when ms is not empty, then each migration after
// a "-- NNNN_description.sql" line, as script renders it (its SQL and the
// statement that records it). With no migration it writes a comment
// saying so, naming what.
func Write(w io.Writer, ms []Migration, what, header string, script func(Migration) string) error {
	var b strings.Builder
	if len(ms) == 0 {
		fmt.Fprintf(&b, "-- No pending migration: %s is up to date.\n", what)
	} else {
		fmt.Fprintf(&b, "-- %d pending migration(s) for %s.\n", len(ms), what)
		if header != "" {
			b.WriteString(strings.TrimRight(header, "\n") + "\n")
		}
		for _, m := range ms {
			fmt.Fprintf(&b, "\n-- %s\n%s\n", m.File, strings.TrimRight(script(m), "\n"))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
