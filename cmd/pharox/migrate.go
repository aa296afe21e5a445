package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/storage/open"
)

func init() { rootCmd.AddCommand(newMigrateCmd()) }

func newMigrateCmd() *cobra.Command {
	var storage string
	var print bool
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Bring a SQL store's schema to this pharox's version, or print the pending SQL",
		Long: `Migrate applies the schema migrations the store lacks (SQLite, PostgreSQL,
MySQL/MariaDB), for operators who run migrations as a step of their own
before starting new versions. pharox serve and the other commands also
migrate on open, so this step is optional; it is safe while other
processes use the store.

--print writes the pending migrations as one SQL script (each after a
comment naming its file, with the statement that records it) and changes
nothing, for review or for running by hand.

A schema migrated by a newer pharox is refused, naming both versions:
upgrade pharox instead. memory:// and redis:// stores have no schema.`,
		Example: `  pharox migrate --storage 'postgres://app@db:5432/app?schema=pharox' --print
  pharox migrate --storage 'postgres://app@db:5432/app?schema=pharox'
  pharox migrate --storage sqlite://pharox.db`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if storage == "" {
				storage = strings.TrimSpace(os.Getenv(envStorage))
			}
			if storage == "" {
				return fmt.Errorf("%w: migrate needs --storage URL (or %s)", pharox.ErrInvalidArgument, envStorage)
			}
			ctx := cmd.Context()
			var err error
			if print {
				err = open.WritePendingMigrations(ctx, cmd.OutOrStdout(), storage)
			} else {
				err = open.Migrate(ctx, storage)
			}
			if errors.Is(err, open.ErrNoMigrations) {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: nothing to migrate\n", err)
				return nil
			}
			if err != nil {
				return err
			}
			if !print {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: schema up to date\n", open.Redact(storage))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&storage, "storage", "", "storage URL to migrate: sqlite://path, postgres://...?schema=name, mysql://...?prefix=name_ (env "+envStorage+"); --store is the same flag")
	f.BoolVar(&print, "print", false, "print the pending migrations as SQL instead of applying them")
	f.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if name == "store" {
			name = "storage"
		}
		return pflag.NormalizedName(name)
	})
	return cmd
}
