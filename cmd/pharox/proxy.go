package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/proxylist"
)

func init() { rootCmd.AddCommand(newProxyCmd()) }

func newProxyCmd() *cobra.Command {
	tf := &targetFlags{}
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Import, list, disable and delete the proxies of a pool",
	}
	tf.register(cmd)
	cmd.AddCommand(newProxyImportCmd(tf), newProxyListCmd(tf), newProxySetStatusCmd(tf), newProxyDeleteCmd(tf))
	return cmd
}

// importFlags are the flags of `proxy import`.
type importFlags struct {
	pool           string
	country        string
	source         string
	protocol       string
	maxConcurrency int
	tags           []string
	onError        string
}

// skippedLine is one bad line of an import, for the report.
type skippedLine struct {
	File  string `json:"file"`
	Line  int    `json:"line"`
	Error string `json:"error"`
	// fileIndex orders reports by the order the files were given.
	fileIndex int
}

func (s skippedLine) String() string {
	if s.Line == 0 {
		return fmt.Sprintf("%s: %s", s.File, s.Error)
	}
	return fmt.Sprintf("%s:%d: %s", s.File, s.Line, s.Error)
}

// importReport is what `proxy import --json` prints.
type importReport struct {
	Pool     string        `json:"pool"`
	Created  int           `json:"created"`
	Proxies  []api.Proxy   `json:"proxies"`
	Rejected []skippedLine `json:"rejected,omitempty"`
	Skipped  []skippedLine `json:"skipped,omitempty"`
}

func newProxyImportCmd(tf *targetFlags) *cobra.Command {
	var f importFlags
	cmd := &cobra.Command{
		Use:         "import FILE... | -",
		Annotations: map[string]string{createsStore: "yes"},
		Short:       "Import proxy lists (host:port[:user:pass], user:pass@host:port, scheme://user:pass@host:port)",
		Long: `Import proxy lists into a pool, one proxy a line; '-' reads standard input.
Blank lines and lines starting with '#' are skipped.

With --on-error reject (the default) any bad line, duplicate or proxy already in
the pool is reported with its line number and nothing is imported. With
--on-error skip the good lines are imported and the bad ones listed. Either way
the import itself is all or nothing.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImport(cmd, tf, &f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.pool, "pool", "", "pool name or id (required)")
	fl.StringVar(&f.country, "country", "", "country code for every proxy (e.g. DE)")
	fl.StringVar(&f.source, "source", "", "source label for every proxy (e.g. the vendor)")
	fl.StringVar(&f.protocol, "protocol", "http", "protocol of lines without a scheme: http, https, socks4 or socks5")
	fl.IntVar(&f.maxConcurrency, "max-concurrency", 0, "leases each proxy takes at once (0: unlimited)")
	fl.StringSliceVar(&f.tags, "tag", nil, "tag for every proxy (repeatable)")
	fl.StringVar(&f.onError, "on-error", "reject", "what bad lines do: reject (import nothing) or skip (import the rest)")
	_ = cmd.MarkFlagRequired("pool")
	return cmd
}

func runImport(cmd *cobra.Command, tf *targetFlags, f *importFlags, files []string) error {
	if f.onError != "reject" && f.onError != "skip" {
		return fmt.Errorf("%w: --on-error must be reject or skip, got %q", pharox.ErrInvalidArgument, f.onError)
	}
	opts := proxylist.ParseOptions{Country: f.country, Source: f.source, Tags: f.tags}
	proto, err := pharox.ParseProtocol(f.protocol)
	if err != nil {
		return fmt.Errorf("--protocol: %w", err)
	}
	opts.Protocol = proto
	switch {
	case f.maxConcurrency < 0:
		return fmt.Errorf("%w: --max-concurrency must be 0 (unlimited) or more, got %d", pharox.ErrInvalidArgument, f.maxConcurrency)
	case f.maxConcurrency > 0:
		opts.MaxConcurrency = &f.maxConcurrency
	}

	// Parse everything before touching the target, so that a typo in a
	// file name costs no round trip.
	type origin struct {
		file  string
		index int
		line  int
	}
	var (
		proxies []pharox.Proxy
		origins []origin
		bad     []skippedLine
		seen    = map[proxylist.Key]origin{}
	)
	stdinUsed := false
	for fileIndex, name := range files {
		var r io.Reader
		display := name
		if name == "-" {
			if stdinUsed {
				return fmt.Errorf("%w: standard input ('-') given twice", pharox.ErrInvalidArgument)
			}
			stdinUsed, r, display = true, cmd.InOrStdin(), "<stdin>"
		} else {
			fh, err := os.Open(name)
			if err != nil {
				return err
			}
			defer fh.Close()
			r = fh
		}
		entries, errs := proxylist.ParseEntries(r, opts)
		for _, e := range errs {
			bad = append(bad, skippedLine{File: display, Line: e.Line, Error: plainMessage(e.Err), fileIndex: fileIndex})
		}
		for _, e := range entries {
			k := proxylist.KeyOf(&e.Proxy)
			if first, dup := seen[k]; dup {
				bad = append(bad, skippedLine{File: display, Line: e.Line, fileIndex: fileIndex,
					Error: fmt.Sprintf("duplicate of %s:%d", first.file, first.line)})
				continue
			}
			o := origin{display, fileIndex, e.Line}
			seen[k] = o
			proxies = append(proxies, e.Proxy)
			origins = append(origins, o)
		}
	}

	return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
		pool, err := resolvePool(ctx, b, f.pool)
		if err != nil {
			return err
		}
		// Proxies already in the pool would make the store refuse the
		// whole batch: name them by line instead.
		existing, err := b.ListProxies(ctx, pool)
		if err != nil {
			return err
		}
		inPool := make(map[proxylist.Key]bool, len(existing))
		for _, p := range existing {
			inPool[proxylist.KeyOf(p)] = true
		}
		keep := proxies[:0:0]
		for i := range proxies {
			if inPool[proxylist.KeyOf(&proxies[i])] {
				bad = append(bad, skippedLine{File: origins[i].file, Line: origins[i].line, fileIndex: origins[i].index,
					Error: "already in pool " + strconv.Quote(pool.Name)})
				continue
			}
			keep = append(keep, proxies[i])
		}
		slices.SortStableFunc(bad, func(a, b skippedLine) int {
			return cmp.Or(cmp.Compare(a.fileIndex, b.fileIndex), cmp.Compare(a.Line, b.Line))
		})

		report := importReport{Pool: pool.Name, Proxies: []api.Proxy{}}
		stderr := cmd.ErrOrStderr()
		if len(bad) > 0 && f.onError == "reject" {
			report.Rejected = bad
			if tf.json {
				if err := printJSON(cmd.OutOrStdout(), report); err != nil {
					return err
				}
			} else {
				for _, s := range bad {
					fmt.Fprintln(stderr, s)
				}
			}
			return fmt.Errorf("%d bad line(s): nothing imported (fix them, or pass --on-error skip to import the rest)", len(bad))
		}
		report.Skipped = bad
		var created []*pharox.Proxy
		if len(keep) > 0 {
			if created, err = b.AddProxies(ctx, pool, keep); err != nil {
				return fmt.Errorf("import into pool %q: nothing imported: %w", pool.Name, err)
			}
		}
		report.Created = len(created)
		for _, p := range created {
			report.Proxies = append(report.Proxies, api.FromProxy(p, false))
		}
		if tf.json {
			return printJSON(cmd.OutOrStdout(), report)
		}
		for _, s := range bad {
			fmt.Fprintln(stderr, "skipped", s)
		}
		msg := fmt.Sprintf("imported %d proxies into pool %s", len(created), pool.Name)
		if len(bad) > 0 {
			msg += fmt.Sprintf(" (skipped %d bad lines)", len(bad))
		}
		_, err = fmt.Fprintln(cmd.OutOrStdout(), msg)
		return err
	})
}

func newProxyListCmd(tf *targetFlags) *cobra.Command {
	var pool string
	cmd := &cobra.Command{
		Use:   "list --pool POOL",
		Short: "List a pool's proxies (user names only, never passwords)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				p, err := resolvePool(ctx, b, pool)
				if err != nil {
					return err
				}
				proxies, err := b.ListProxies(ctx, p)
				if err != nil {
					return err
				}
				return printProxies(cmd, tf, proxies)
			})
		},
	}
	cmd.Flags().StringVar(&pool, "pool", "", "pool name or id (required)")
	_ = cmd.MarkFlagRequired("pool")
	return cmd
}

// printProxies prints proxies without their passwords, in both formats.
func printProxies(cmd *cobra.Command, tf *targetFlags, proxies []*pharox.Proxy) error {
	if tf.json {
		out := make([]api.Proxy, len(proxies))
		for i, p := range proxies {
			out[i] = api.FromProxy(p, false)
		}
		return printJSON(cmd.OutOrStdout(), out)
	}
	t := newTable(cmd.OutOrStdout(), "ID", "PROTOCOL", "ADDRESS", "USER", "STATUS", "LEASES", "MAX", "COUNTRY", "SOURCE", "LATENCY", "CHECKED")
	for _, p := range proxies {
		user, maxc, latency := "", "unlimited", ""
		if p.Credentials != nil {
			user = p.Credentials.User
		}
		if p.MaxConcurrency != nil {
			maxc = strconv.Itoa(*p.MaxConcurrency)
		}
		if p.CheckedAt != nil {
			latency = strconv.FormatInt(p.LatencyMS, 10) + "ms"
		}
		t.row(p.ID.String(), string(p.Protocol), p.Address(), user, string(p.Status),
			strconv.Itoa(p.CurrentLeases), maxc, p.Country, p.Source, latency, formatTimePtr(p.CheckedAt))
	}
	return t.flush()
}

func newProxySetStatusCmd(tf *targetFlags) *cobra.Command {
	var pool string
	cmd := &cobra.Command{
		Use:   "set-status --pool POOL PROXY_ID STATUS",
		Short: "Set a proxy's status by hand: active, slow, inactive or banned",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID("proxy id", args[0])
			if err != nil {
				return err
			}
			status, err := pharox.ParseProxyStatus(args[1])
			if err != nil {
				return err
			}
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				p, err := resolvePool(ctx, b, pool)
				if err != nil {
					return err
				}
				proxy, err := b.SetProxyStatus(ctx, p, id, status)
				if err != nil {
					return err
				}
				return printProxies(cmd, tf, []*pharox.Proxy{proxy})
			})
		},
	}
	cmd.Flags().StringVar(&pool, "pool", "", "pool name or id (required)")
	_ = cmd.MarkFlagRequired("pool")
	return cmd
}

func newProxyDeleteCmd(tf *targetFlags) *cobra.Command {
	var pool string
	cmd := &cobra.Command{
		Use:   "delete --pool POOL PROXY_ID...",
		Short: "Delete proxies; refused for a proxy with active leases",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ids []uuid.UUID
			for _, a := range args {
				id, err := parseID("proxy id", a)
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				p, err := resolvePool(ctx, b, pool)
				if err != nil {
					return err
				}
				// Delete what can be deleted and report the rest: one proxy
				// in use should not keep the others.
				var errs []error
				deleted := []string{}
				for _, id := range ids {
					if err := b.DeleteProxy(ctx, p, id); err != nil {
						errs = append(errs, fmt.Errorf("delete proxy %s: %w", id, err))
						continue
					}
					deleted = append(deleted, id.String())
				}
				if tf.json {
					if err := printJSON(cmd.OutOrStdout(), map[string][]string{"deleted": deleted}); err != nil {
						return err
					}
				} else {
					for _, s := range deleted {
						fmt.Fprintf(cmd.OutOrStdout(), "deleted proxy %s\n", s)
					}
				}
				return errors.Join(errs...)
			})
		},
	}
	cmd.Flags().StringVar(&pool, "pool", "", "pool name or id (required)")
	_ = cmd.MarkFlagRequired("pool")
	return cmd
}
