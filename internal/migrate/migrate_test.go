package migrate

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/fstest"
)

func files(names ...string) fstest.MapFS {
	fsys := fstest.MapFS{}
	for _, n := range names {
		fsys["m/"+n] = &fstest.MapFile{Data: []byte("SELECT '" + n + "';\n")}
	}
	return fsys
}

func TestLoadOrdersAndValidates(t *testing.T) {
	ms, err := Load(files("0002_b.sql", "0001_a.sql", "0003_c_d.sql", "README.md"), "m")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || ms[0].File != "0001_a.sql" || ms[2].Version != 3 || ms[2].Description != "c_d" || !strings.Contains(ms[1].SQL, "0002_b") {
		t.Fatalf("Load: %+v", ms)
	}
	for _, tc := range []struct {
		files []string
		want  string
	}{
		{[]string{"0001_a.sql", "0003_c.sql"}, "0003_c.sql is number 3, want 2"},
		{[]string{"0002_b.sql"}, "0002_b.sql is number 2, want 1"},
		{[]string{"0001_a.sql", "0001_b.sql"}, "same number 1"},
		{[]string{"0001.sql"}, "0001.sql is not named NNNN_description.sql"},
		{[]string{"one_a.sql"}, "one_a.sql is not named"},
		{[]string{"0000_zero.sql"}, "0000_zero.sql is not named"},
	} {
		if _, err := Load(files(tc.files...), "m"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%v) = %v, want an error containing %q", tc.files, err, tc.want)
		}
	}
}

// fakeTarget records what Run applies.
type fakeTarget struct {
	version int
	applied []string
	failAt  int
}

func (f *fakeTarget) Version(context.Context) (int, error) { return f.version, nil }

func (f *fakeTarget) Apply(_ context.Context, m Migration) error {
	if m.Version == f.failAt {
		return errors.New("boom")
	}
	f.applied = append(f.applied, m.File)
	f.version = m.Version
	return nil
}

func TestRun(t *testing.T) {
	ms := MustLoad(files("0001_a.sql", "0002_b.sql", "0003_c.sql"), "m")
	ctx := context.Background()

	tg := &fakeTarget{version: 1}
	done, err := Run(ctx, ms, tg, "schema x")
	if err != nil || len(done) != 2 || strings.Join(tg.applied, ",") != "0002_b.sql,0003_c.sql" {
		t.Fatalf("Run from 1: %v %v, applied %v", done, err, tg.applied)
	}
	if done, err := Run(ctx, ms, tg, "schema x"); err != nil || len(done) != 0 {
		t.Fatalf("Run when up to date: %v %v", done, err)
	}

	_, err = Run(ctx, ms, &fakeTarget{version: 5}, "schema x")
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Run on version 5: %v, want ErrSchemaTooNew", err)
	}
	for _, part := range []string{"schema x", "version 5", "up to 3"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q does not name %q", err, part)
		}
	}

	tg = &fakeTarget{failAt: 2}
	done, err = Run(ctx, ms, tg, "schema x")
	if err == nil || !strings.Contains(err.Error(), "apply 0002_b.sql to schema x: boom") || len(done) != 1 {
		t.Fatalf("Run failing at 2: %v %v", done, err)
	}
}

func TestCheck(t *testing.T) {
	ms := MustLoad(files("0001_a.sql", "0002_b.sql"), "m")
	if err := Check(ms, 2, "db", "migrate"); err != nil {
		t.Fatal(err)
	}
	if err := Check(ms, 1, "db", "run pharox migrate"); !errors.Is(err, ErrSchemaTooOld) || !strings.Contains(err.Error(), "version 1, this pharox needs 2: run pharox migrate") {
		t.Fatalf("Check(1) = %v", err)
	}
	if err := Check(ms, 3, "db", ""); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Check(3) = %v", err)
	}
}

func TestWrite(t *testing.T) {
	ms := MustLoad(files("0001_a.sql", "0002_b.sql"), "m")
	var b strings.Builder
	if err := Write(&b, ms[1:], "schema x", "CREATE TABLE v;", func(m Migration) string { return m.SQL + "INSERT v;" }); err != nil {
		t.Fatal(err)
	}
	want := "-- 1 pending migration(s) for schema x.\nCREATE TABLE v;\n\n-- 0002_b.sql\nSELECT '0002_b.sql';\nINSERT v;\n"
	if b.String() != want {
		t.Fatalf("Write:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	Write(&b, nil, "schema x", "CREATE TABLE v;", nil)
	if b.String() != "-- No pending migration: schema x is up to date.\n" {
		t.Fatalf("Write with nothing pending: %q", b.String())
	}
}
