package main

import (
	"cmp"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func init() {
	rootCmd.AddCommand(newUsageCmd())
	rootCmd.AddCommand(newQuotaCmd())
}

const usageHelp = `Show the traffic reported when leases were released, totalled per consumer,
proxy, pool or target (site) over the hours from --since to --until.

The gateway and the HTTP transport report the requests and bytes each lease
carried when they release it; other clients may report theirs with the
release (the usage field of the API's release body). Leases that expire
report nothing. Totals are kept in hourly buckets, so --since counts from the
start of its hour; serve keeps the buckets for --usage-retention (90 days by
default).

The table lists the largest totals first, with bytes in SI units (1 GB = 10^9
bytes); --json prints the API's answer and --csv exact numbers, both ordered
by key. A consumer key bound to consumers sees only their usage.`

func newUsageCmd() *cobra.Command {
	tf := &targetFlags{}
	var (
		groupBy, since, until, pool, consumer string
		asCSV                                 bool
	)
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Show traffic per consumer, proxy, pool or target (site)",
		Long:  usageHelp,
		Example: `  pharox usage
  pharox usage --group-by pool --since 720h
  pharox usage --group-by target --consumer scraper-1 --csv`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var q pharox.UsageQuery
			var err error
			if q.GroupBy, err = pharox.ParseUsageGroup(strings.ToLower(strings.TrimSpace(groupBy))); err != nil {
				return usageError{fmt.Errorf("--group-by must be consumer, proxy, pool or target, got %q", groupBy)}
			}
			if q.Since, err = parseSince("--since", since); err != nil {
				return usageError{err}
			}
			if q.Until, err = parseSince("--until", until); err != nil {
				return usageError{err}
			}
			if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
				return usageError{fmt.Errorf("--since (%s) must be before --until (%s)", formatTime(q.Since), formatTime(q.Until))}
			}
			if asCSV && tf.json {
				return usageError{errors.New("give --json or --csv, not both")}
			}
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				if pool != "" {
					p, err := resolvePool(ctx, b, pool)
					if err != nil {
						return err
					}
					q.PoolID = p.ID
				}
				if consumer != "" {
					c, err := resolveConsumer(ctx, b, consumer, false)
					if err != nil {
						return err
					}
					q.ConsumerID = c.ID
				}
				rows, err := b.Usage(ctx, q)
				if err != nil {
					return err
				}
				switch {
				case tf.json:
					return printJSON(cmd.OutOrStdout(), usageReport(q, rows))
				case asCSV:
					return printUsageCSV(cmd, q.GroupBy, rows)
				}
				return printUsageTable(cmd, q.GroupBy, rows)
			})
		},
	}
	tf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&groupBy, "group-by", "consumer", "consumer, proxy, pool or target")
	f.StringVar(&since, "since", "24h", `from this time: RFC 3339, or a duration ago like 720h; "" for everything kept`)
	f.StringVar(&until, "until", "", "before this time: RFC 3339, or a duration ago (default now)")
	f.StringVar(&pool, "pool", "", "only this pool's usage (name or id)")
	f.StringVar(&consumer, "consumer", "", "only this consumer's usage (name or id)")
	f.BoolVar(&asCSV, "csv", false, "print CSV with exact numbers")
	return cmd
}

// usageReport is the API's answer for rows, the same in both modes.
func usageReport(q pharox.UsageQuery, rows []pharox.UsageRow) api.UsageReport {
	out := api.UsageReport{GroupBy: string(q.GroupBy), Rows: make([]api.UsageRow, len(rows))}
	if !q.Since.IsZero() {
		out.Since = &api.Time{Time: q.Since.Truncate(pharox.UsageBucket)}
	}
	if !q.Until.IsZero() {
		out.Until = &api.Time{Time: q.Until}
	}
	for i, r := range rows {
		out.Rows[i] = api.FromUsageRow(r)
	}
	return out
}

// usageLabel is how a row's group reads in a table: the name when there
// is one, else the key; leases without a target read "(none)".
func usageLabel(g pharox.UsageGroup, r pharox.UsageRow) string {
	switch {
	case r.Name != "":
		return r.Name
	case g == pharox.UsageByTarget && r.Key == "":
		return "(none)"
	}
	return r.Key
}

func printUsageTable(cmd *cobra.Command, g pharox.UsageGroup, rows []pharox.UsageRow) error {
	sorted := slices.Clone(rows)
	slices.SortStableFunc(sorted, func(a, b pharox.UsageRow) int {
		return cmp.Or(cmp.Compare(b.Bytes(), a.Bytes()), cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.Key, b.Key))
	})
	t := newTable(cmd.OutOrStdout(), strings.ToUpper(string(g)), "LEASES", "REQUESTS", "SENT", "RECEIVED", "TOTAL")
	var total pharox.UsageRow
	for _, r := range sorted {
		t.row(usageLabel(g, r), strconv.FormatInt(r.Leases, 10), strconv.FormatInt(r.Requests, 10),
			formatBytes(r.BytesSent), formatBytes(r.BytesReceived), formatBytes(r.Bytes()))
		total.Leases += r.Leases
		total.Usage = total.Usage.Add(r.Usage)
	}
	if len(sorted) > 1 {
		t.row("(all)", strconv.FormatInt(total.Leases, 10), strconv.FormatInt(total.Requests, 10),
			formatBytes(total.BytesSent), formatBytes(total.BytesReceived), formatBytes(total.Bytes()))
	}
	return t.flush()
}

func printUsageCSV(cmd *cobra.Command, g pharox.UsageGroup, rows []pharox.UsageRow) error {
	w := csv.NewWriter(cmd.OutOrStdout())
	_ = w.Write([]string{"group_by", "key", "name", "leases", "requests", "bytes_sent", "bytes_received"})
	for _, r := range rows {
		_ = w.Write([]string{string(g), r.Key, r.Name, strconv.FormatInt(r.Leases, 10), strconv.FormatInt(r.Requests, 10),
			strconv.FormatInt(r.BytesSent, 10), strconv.FormatInt(r.BytesReceived, 10)})
	}
	w.Flush()
	return w.Error()
}

// resolveConsumer finds a consumer by id or name; create makes one of a
// name not seen yet, as an acquisition would.
func resolveConsumer(ctx context.Context, b backend, ref string, create bool) (*pharox.Consumer, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return nil, fmt.Errorf("%w: consumer name or id is empty", pharox.ErrInvalidArgument)
	}
	all, err := b.ListConsumers(ctx)
	if err != nil {
		return nil, err
	}
	if id, err := uuid.Parse(ref); err == nil {
		for _, c := range all {
			if c.ID == id {
				return c, nil
			}
		}
	}
	for _, c := range all {
		if c.Name == ref {
			return c, nil
		}
	}
	if create {
		return b.EnsureConsumer(ctx, ref)
	}
	return nil, fmt.Errorf("consumer %q: %w", ref, pharox.ErrConsumerNotFound)
}

// byteUnits are the units formatBytes prints and parseBytes reads: SI
// (1 kB = 1000 bytes, as providers bill), and the binary ones for input.
var byteUnits = []struct {
	suffix string
	n      float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40}, {"pib", 1 << 50},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12}, {"pb", 1e15},
	{"k", 1e3}, {"m", 1e6}, {"g", 1e9}, {"t", 1e12}, {"p", 1e15},
	{"b", 1},
}

// parseBytes reads a byte count like 10GB, 1.5TB, 512MiB or 1000000.
func parseBytes(flag, v string) (int64, error) {
	s := strings.ToLower(strings.TrimSpace(v))
	mult := 1.0
	for _, u := range byteUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(num), u.n
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f*mult > math.MaxInt64/2 {
		return 0, fmt.Errorf("%s must be a byte count like 10GB, 1TB or 512MiB (0 for no limit), got %q", flag, v)
	}
	return int64(math.Round(f * mult)), nil
}

// formatBytes prints a byte count in SI units with three significant
// digits: 999 B, 1.50 kB, 12.3 GB.
func formatBytes(n int64) string {
	if n < 1000 {
		return strconv.FormatInt(n, 10) + " B"
	}
	v := float64(n)
	for _, unit := range []string{"kB", "MB", "GB", "TB", "PB", "EB"} {
		v /= 1000
		if v < 999.5 || unit == "EB" {
			switch {
			case v < 9.995:
				return strconv.FormatFloat(v, 'f', 2, 64) + " " + unit
			case v < 99.95:
				return strconv.FormatFloat(v, 'f', 1, 64) + " " + unit
			}
			return strconv.FormatFloat(v, 'f', 0, 64) + " " + unit
		}
	}
	return strconv.FormatInt(n, 10) + " B"
}
