package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func init() { rootCmd.AddCommand(newPoolCmd()) }

// newPoolCmd builds `pharox pool`. Commands are built by constructors,
// not package variables, so that tests get fresh flag state per run.
func newPoolCmd() *cobra.Command {
	tf := &targetFlags{}
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Create, list and delete proxy pools",
	}
	tf.register(cmd)

	var description string
	create := &cobra.Command{
		Use:         "create NAME",
		Short:       "Create a pool",
		Annotations: map[string]string{createsStore: "yes"},
		Args:        cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				p, err := b.CreatePool(ctx, args[0], description)
				if errors.Is(err, pharox.ErrAlreadyExists) {
					// The stores' message names the new pool's id too.
					return wrapMessage(fmt.Sprintf("a pool named %q already exists", strings.TrimSpace(args[0])), err)
				}
				if err != nil {
					return err
				}
				if tf.json {
					return printJSON(cmd.OutOrStdout(), api.FromPool(p))
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "created pool %s (%s)\n", p.Name, p.ID)
				return err
			})
		},
	}
	create.Flags().StringVar(&description, "description", "", "what the pool is for")

	list := &cobra.Command{
		Use:   "list",
		Short: "List pools",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				pools, err := b.ListPools(ctx)
				if err != nil {
					return err
				}
				return printPools(cmd, tf, pools)
			})
		},
	}

	del := &cobra.Command{
		Use:   "delete POOL",
		Short: "Delete a pool (by name or id) with its proxies; refused while it has active leases",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				p, err := resolvePool(ctx, b, args[0])
				if err != nil {
					return err
				}
				if err := b.DeletePool(ctx, p.ID); err != nil {
					return fmt.Errorf("delete pool %q: %w", p.Name, err)
				}
				if tf.json {
					return printJSON(cmd.OutOrStdout(), api.FromPool(p))
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "deleted pool %s (%s)\n", p.Name, p.ID)
				return err
			})
		},
	}

	cmd.AddCommand(create, list, del)
	return cmd
}

func printPools(cmd *cobra.Command, tf *targetFlags, pools []*pharox.Pool) error {
	if tf.json {
		out := make([]api.Pool, len(pools))
		for i, p := range pools {
			out[i] = api.FromPool(p)
		}
		return printJSON(cmd.OutOrStdout(), out)
	}
	t := newTable(cmd.OutOrStdout(), "ID", "NAME", "DESCRIPTION", "CREATED")
	for _, p := range pools {
		t.row(p.ID.String(), p.Name, p.Description, formatTime(p.CreatedAt))
	}
	return t.flush()
}
