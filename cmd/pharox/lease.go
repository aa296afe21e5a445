package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

func init() { rootCmd.AddCommand(newLeaseCmd()) }

func newLeaseCmd() *cobra.Command {
	tf := &targetFlags{}
	cmd := &cobra.Command{
		Use:   "lease",
		Short: "Acquire, release and list leases by hand",
	}
	tf.register(cmd)
	cmd.AddCommand(newLeaseAcquireCmd(tf), newLeaseReleaseCmd(tf), newLeaseListCmd(tf))
	return cmd
}

type acquireFlags struct {
	pool        string
	consumer    string
	ttl         time.Duration
	strategy    string
	country     string
	city        string
	source      string
	protocol    string
	tags        []string
	sessionKey  string
	sessionTTL  time.Duration
	wait        time.Duration
	withSecrets bool
	target      string
}

func newLeaseAcquireCmd(tf *targetFlags) *cobra.Command {
	var f acquireFlags
	cmd := &cobra.Command{
		Use:   "acquire --pool POOL",
		Short: "Lease a proxy and print the lease (release it with `pharox lease release ID`)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := f.options()
			if err != nil {
				return err
			}
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				p, err := resolvePool(ctx, b, f.pool)
				if err != nil {
					return err
				}
				lease, err := b.Acquire(ctx, p, opts, f.wait)
				if errors.Is(err, pharox.ErrNoProxyAvailable) {
					// Said once, here and over a server alike, instead of
					// each layer's prefix.
					msg := fmt.Sprintf("no proxy available in pool %q: every matching proxy is busy or none matches", p.Name)
					if f.wait > 0 {
						msg = fmt.Sprintf("no proxy in pool %q freed up within --wait %s", p.Name, f.wait)
					}
					return wrapMessage(msg, err)
				}
				if err != nil {
					return err
				}
				if lease.PoolName == "" {
					lease.PoolName = p.Name
				}
				if tf.json {
					return printJSON(cmd.OutOrStdout(), api.FromLease(lease, f.withSecrets))
				}
				return printLeases(cmd, tf, []*pharox.Lease{lease}, f.withSecrets)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.pool, "pool", "", "pool name or id (required)")
	fl.StringVar(&f.consumer, "consumer", "", "consumer name (default \""+pharox.DefaultConsumerName+"\")")
	fl.DurationVar(&f.ttl, "ttl", pharox.DefaultLeaseDuration, "how long the lease lasts")
	fl.StringVar(&f.strategy, "strategy", "", "first_available (default), least_used, round_robin or random")
	fl.StringVar(&f.country, "country", "", "only proxies in this country")
	fl.StringVar(&f.city, "city", "", "only proxies in this city")
	fl.StringVar(&f.source, "source", "", "only proxies from this source")
	fl.StringVar(&f.protocol, "protocol", "", "only proxies speaking this protocol")
	fl.StringSliceVar(&f.tags, "tag", nil, "only proxies with this tag (repeatable)")
	fl.StringVar(&f.sessionKey, "session-key", "", "sticky session: the same key gets the same proxy while the session lives")
	fl.DurationVar(&f.sessionTTL, "session-ttl", 0, "how long the sticky session lives (default 10m)")
	fl.DurationVar(&f.wait, "wait", 0, "wait up to this long for a free proxy (a server refuses waits over its --max-wait)")
	fl.BoolVar(&f.withSecrets, "with-secrets", false, "print the proxy's password and URL (for scripts that use the lease)")
	fl.StringVar(&f.target, "target", "", "the site the lease is for (host, host:port or URL): skip proxies cooling down for it")
	_ = cmd.MarkFlagRequired("pool")
	return cmd
}

func (f *acquireFlags) options() (*pharox.AcquireOptions, error) {
	opts := &pharox.AcquireOptions{Consumer: f.consumer, Duration: f.ttl, SessionKey: f.sessionKey, SessionTTL: f.sessionTTL}
	if _, err := pharox.NormalizeTarget(f.target); err != nil {
		return nil, fmt.Errorf("%w: --target %q is not a host name, host:port, IP address or URL", pharox.ErrInvalidArgument, f.target)
	}
	opts.Target = f.target
	if f.ttl <= 0 {
		return nil, fmt.Errorf("%w: --ttl must be positive, got %v", pharox.ErrInvalidArgument, f.ttl)
	}
	if f.wait < 0 {
		return nil, fmt.Errorf("%w: --wait must not be negative, got %v", pharox.ErrInvalidArgument, f.wait)
	}
	st, err := pharox.ParseStrategy(f.strategy)
	if err != nil {
		return nil, err
	}
	opts.Strategy = st
	filters := pharox.Filters{Country: f.country, City: f.city, Source: f.source, Tags: f.tags}
	if f.protocol != "" {
		if filters.Protocol, err = pharox.ParseProtocol(f.protocol); err != nil {
			return nil, err
		}
	}
	if !filters.IsZero() {
		opts.Filters = &filters
	}
	return opts, nil
}

func newLeaseReleaseCmd(tf *targetFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "release LEASE_ID...",
		Short: "Release leases (a lease that already ended is reported as it ended, not as an error)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ids []uuid.UUID
			for _, a := range args {
				id, err := parseID("lease id", a)
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				var errs []error
				var released []*pharox.Lease
				for _, id := range ids {
					l, err := b.Release(ctx, id)
					if err != nil {
						errs = append(errs, err)
						continue
					}
					released = append(released, l)
				}
				if tf.json {
					out := make([]api.Lease, len(released))
					for i, l := range released {
						out[i] = api.FromLease(l, false)
					}
					if err := printJSON(cmd.OutOrStdout(), out); err != nil {
						return err
					}
				} else {
					for _, l := range released {
						held := "-"
						if l.ReleasedAt != nil {
							held = l.ReleasedAt.Sub(l.AcquiredAt).Round(time.Millisecond).String()
						}
						if l.Status == pharox.LeaseExpired {
							fmt.Fprintf(cmd.OutOrStdout(), "lease %s had already expired at %s\n", l.ID, formatTime(l.ExpiresAt))
							continue
						}
						fmt.Fprintf(cmd.OutOrStdout(), "released lease %s (held %s)\n", l.ID, held)
					}
				}
				return errors.Join(errs...)
			})
		},
	}
}

func newLeaseListCmd(tf *targetFlags) *cobra.Command {
	var (
		pool, consumer, status string
		limit                  int
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List leases, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var q pharox.LeaseQuery
			if status != "" {
				q.Status = pharox.LeaseStatus(strings.ToLower(strings.TrimSpace(status)))
				if !q.Status.Valid() {
					return fmt.Errorf("%w: --status must be active, released or expired, got %q", pharox.ErrInvalidArgument, status)
				}
			}
			if limit < 0 {
				return fmt.Errorf("%w: --limit must not be negative", pharox.ErrInvalidArgument)
			}
			// A consumer given by name is matched on the leases, since
			// neither the store nor the API looks consumers up by name
			// without creating them; the limit then applies afterwards.
			consumerName := ""
			if consumer != "" {
				if id, err := uuid.Parse(consumer); err == nil {
					q.ConsumerID = id
				} else {
					consumerName = consumer
				}
			}
			if consumerName == "" {
				q.Limit = limit
			}
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				if pool != "" {
					p, err := resolvePool(ctx, b, pool)
					if err != nil {
						return err
					}
					q.PoolID = p.ID
				}
				leases, err := b.ListLeases(ctx, q)
				if err != nil {
					return err
				}
				if consumerName != "" {
					kept := leases[:0]
					for _, l := range leases {
						if l.ConsumerName == consumerName {
							kept = append(kept, l)
						}
					}
					leases = kept
					if limit > 0 && len(leases) > limit {
						leases = leases[:limit]
					}
				}
				return printLeases(cmd, tf, leases, false)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&pool, "pool", "", "only this pool (name or id)")
	fl.StringVar(&consumer, "consumer", "", "only this consumer (name or id)")
	fl.StringVar(&status, "status", "", "only active, released or expired leases")
	fl.IntVar(&limit, "limit", 0, "at most this many (0: no limit; a server caps it)")
	return cmd
}

// printLeases prints leases; withSecrets includes the password and URL of
// a lease's proxy (only an acquisition carries one).
func printLeases(cmd *cobra.Command, tf *targetFlags, leases []*pharox.Lease, withSecrets bool) error {
	if tf.json {
		out := make([]api.Lease, len(leases))
		for i, l := range leases {
			out[i] = api.FromLease(l, withSecrets)
		}
		return printJSON(cmd.OutOrStdout(), out)
	}
	t := newTable(cmd.OutOrStdout(), "ID", "POOL", "PROXY", "CONSUMER", "STATUS", "ACQUIRED", "EXPIRES", "RELEASED")
	for _, l := range leases {
		proxy := l.ProxyID.String()
		if l.Proxy != nil {
			if withSecrets {
				proxy = l.Proxy.URL()
			} else {
				proxy = l.Proxy.String()
			}
		}
		consumer := l.ConsumerName
		if consumer == "" {
			consumer = l.ConsumerID.String()
		}
		t.row(l.ID.String(), l.PoolName, proxy, consumer, string(l.Status),
			formatTime(l.AcquiredAt), formatTime(l.ExpiresAt), formatTimePtr(l.ReleasedAt))
	}
	return t.flush()
}
