package mysql

import (
	"context"
	"testing"
)

// TestMigrateReappliesInterruptedMigration checks that every migration can
// be applied again over its own effects, as Migrate does after a crash
// between a migration's DDL (committed statement by statement) and its
// schema_migrations row: including the ALTER TABLE ADD COLUMN and ADD KEY
// statements of 0002 and 0004, which MySQL cannot write as IF NOT EXISTS.
func TestMigrateReappliesInterruptedMigration(t *testing.T) {
	prefix := uniquePrefix()
	dropTablesOnCleanup(t, prefix)
	admin := testAdmin(t)
	ctx := context.Background()
	if err := Migrate(ctx, admin, WithTablePrefix(prefix)); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ExecContext(ctx, `DELETE FROM `+prefix+`schema_migrations`); err != nil {
		t.Fatal(err)
	}
	if err := Migrate(ctx, admin, WithTablePrefix(prefix)); err != nil {
		t.Fatalf("Migrate over applied migrations: %v", err)
	}
	var rows int
	if err := admin.QueryRowContext(ctx, `SELECT count(*) FROM `+prefix+`schema_migrations`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if want := latestVersion(); rows != want {
		t.Fatalf("schema_migrations has %d rows, want %d", rows, want)
	}
}
