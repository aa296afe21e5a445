package main

import (
	"context"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func init() { rootCmd.AddCommand(newStatsCmd()) }

func newStatsCmd() *cobra.Command {
	tf := &targetFlags{}
	var pool string
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show pool occupancy: proxies by status, free and leased",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				var pools []*pharox.Pool
				if pool != "" {
					p, err := resolvePool(ctx, b, pool)
					if err != nil {
						return err
					}
					pools = []*pharox.Pool{p}
				} else {
					var err error
					if pools, err = b.ListPools(ctx); err != nil {
						return err
					}
				}
				stats := make([]*pharox.PoolStats, 0, len(pools))
				for _, p := range pools {
					s, err := b.PoolStats(ctx, p)
					if err != nil {
						return err
					}
					stats = append(stats, s)
				}
				return printStats(cmd, tf, stats)
			})
		},
	}
	tf.register(cmd)
	cmd.Flags().StringVar(&pool, "pool", "", "only this pool (name or id); default every pool")
	return cmd
}

func printStats(cmd *cobra.Command, tf *targetFlags, stats []*pharox.PoolStats) error {
	if tf.json {
		out := make([]api.PoolStats, len(stats))
		for i, s := range stats {
			out[i] = api.FromPoolStats(s)
		}
		return printJSON(cmd.OutOrStdout(), out)
	}
	headers := []string{"POOL", "PROXIES", "LEASABLE", "AVAILABLE", "LEASED", "LEASES"}
	for _, st := range pharox.AllProxyStatuses {
		headers = append(headers, string(st))
	}
	t := newTable(cmd.OutOrStdout(), upper(headers)...)
	for _, s := range stats {
		row := []string{s.PoolName, strconv.Itoa(s.TotalProxies), strconv.Itoa(s.ActiveProxies),
			strconv.Itoa(s.AvailableProxies), strconv.Itoa(s.LeasedProxies), strconv.Itoa(s.TotalLeases)}
		for _, st := range pharox.AllProxyStatuses {
			row = append(row, strconv.Itoa(s.ByStatus[st]))
		}
		t.row(row...)
	}
	return t.flush()
}

func upper(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToUpper(s)
	}
	return out
}
