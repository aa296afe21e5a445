package main

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

const targetsHelp = `Show a pool's health per site (target): for every site a proxy of the
pool has a record for, how many proxies are usable for it (leasable and not
cooling down for it), how many cool down for it, and how many started a
cool-down for it in the last hour. Sites are registrable domains
(shop.example.co.uk counts for example.co.uk) or IP addresses; the gateway
and the HTTP transport record them from their traffic, and clients with the
target field of an outcome. The table lists the sites with the most
proxies cooling first; --json prints the API's answer, ordered by site.

With --proxy, show one proxy's record per site instead: its failure
streak, cool-downs in a row, until when it cools down and the last reason.

Stores that keep no per-site health answer that they do not.`

func init() { rootCmd.AddCommand(newTargetsCmd()) }

func newTargetsCmd() *cobra.Command {
	tf := &targetFlags{}
	var pool, proxy string
	cmd := &cobra.Command{
		Use:   "targets --pool POOL",
		Short: "Show a pool's health per site (target): proxies usable, cooling down, banned in the last hour",
		Long:  targetsHelp,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var proxyID uuid.UUID
			if proxy != "" {
				id, err := parseID("--proxy", proxy)
				if err != nil {
					return err
				}
				proxyID = id
			}
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				p, err := resolvePool(ctx, b, pool)
				if err != nil {
					return err
				}
				if proxyID != uuid.Nil {
					states, err := b.ProxyTargets(ctx, p, proxyID)
					if err != nil {
						return err
					}
					return printProxyTargets(cmd, tf, states)
				}
				stats, err := b.PoolTargets(ctx, p)
				if err != nil {
					return err
				}
				return printPoolTargets(cmd, tf, stats)
			})
		},
	}
	tf.register(cmd)
	cmd.Flags().StringVar(&pool, "pool", "", "pool name or id (required)")
	cmd.Flags().StringVar(&proxy, "proxy", "", "show this proxy's record per site (proxy id)")
	_ = cmd.MarkFlagRequired("pool")
	return cmd
}

func printPoolTargets(cmd *cobra.Command, tf *targetFlags, stats []*pharox.TargetStats) error {
	if tf.json {
		out := make([]api.TargetStats, len(stats))
		for i, s := range stats {
			out[i] = api.FromTargetStats(s)
		}
		return printJSON(cmd.OutOrStdout(), out)
	}
	sorted := slices.Clone(stats)
	slices.SortStableFunc(sorted, func(a, b *pharox.TargetStats) int {
		return cmp.Or(cmp.Compare(b.CoolingProxies, a.CoolingProxies), cmp.Compare(b.BansLastHour, a.BansLastHour), cmp.Compare(a.Target, b.Target))
	})
	t := newTable(cmd.OutOrStdout(), "TARGET", "USABLE", "COOLING", "BANS_1H")
	for _, s := range sorted {
		t.row(s.Target, strconv.Itoa(s.UsableProxies), strconv.Itoa(s.CoolingProxies), strconv.Itoa(s.BansLastHour))
	}
	return t.flush()
}

func printProxyTargets(cmd *cobra.Command, tf *targetFlags, states []*pharox.TargetState) error {
	now := time.Now()
	if tf.json {
		out := make([]api.TargetState, len(states))
		for i, s := range states {
			out[i] = api.FromTargetState(s, now)
		}
		return printJSON(cmd.OutOrStdout(), out)
	}
	t := newTable(cmd.OutOrStdout(), "TARGET", "COOLING_UNTIL", "STREAK", "BANS", "LAST_STATUS", "LAST_REASON", "LAST_SUCCESS")
	for _, s := range states {
		until := "-"
		if s.CoolingAt(now) {
			until = formatTimePtr(s.CoolingUntil)
		}
		status := "-"
		if s.LastStatusCode != 0 {
			status = strconv.Itoa(s.LastStatusCode)
		}
		t.row(s.Target, until, strconv.Itoa(s.FailureStreak), strconv.Itoa(s.Bans), status, s.LastReason, formatTimePtr(s.LastSuccessAt))
	}
	return t.flush()
}
