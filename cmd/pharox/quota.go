package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
)

const quotaHelp = `Set, list, read and delete the quotas of consumers, pools and proxies.

A consumer or a pool may have:
  --max-leases N        at most N active leases at once, enforced inside the
                        acquisition like a proxy's max_concurrency
  --rpm N               at most N acquisitions per minute (a token bucket
                        holding N, refilled continuously)
  --bytes-per-day B     traffic reported at release per UTC day
  --bytes-per-month B   and per calendar month
An acquisition over one of them is refused: the API answers 429 with
Retry-After and a detail naming the quota, the gateway answers 429 too.
Byte limits are checked at acquisition against the traffic already
reported, so they are soft by the traffic of the leases active when the
limit is reached.

A proxy takes only the byte limits: its provider's traffic allowance. A
proxy over its allowance is not leased until its day or month ends.

Byte counts take SI or binary units: 10GB, 1.5TB, 512MiB. quota set changes
the limits given and keeps the others; 0 removes a limit. A consumer is
named by name or id (a name not seen yet is created, as an acquisition
would), a pool by name or id, a proxy by id. Changes are recorded in the
audit log.`

func newQuotaCmd() *cobra.Command {
	tf := &targetFlags{}
	cmd := &cobra.Command{
		Use:   "quota",
		Short: "Set, list, read and delete consumer, pool and proxy quotas",
		Long:  quotaHelp,
	}
	tf.register(cmd)

	var (
		maxLeases, rpm             int
		bytesPerDay, bytesPerMonth string
	)
	set := &cobra.Command{
		Use:   "set consumer|pool|proxy NAME",
		Short: "Set a quota's limits (the others given before are kept; 0 removes one)",
		Example: `  pharox quota set consumer scraper-1 --max-leases 5 --rpm 60
  pharox quota set pool residential --bytes-per-month 1TB
  pharox quota set proxy 0b9c...e1 --bytes-per-day 10GB`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			subject, err := parseQuotaSubject(args[0])
			if err != nil {
				return err
			}
			flags := cmd.Flags()
			var change struct {
				limits pharox.QuotaLimits
				set    [4]bool
			}
			change.limits.MaxConcurrentLeases, change.set[0] = maxLeases, flags.Changed("max-leases")
			change.limits.RequestsPerMinute, change.set[1] = rpm, flags.Changed("rpm")
			if change.set[2] = flags.Changed("bytes-per-day"); change.set[2] {
				if change.limits.BytesPerDay, err = parseBytes("--bytes-per-day", bytesPerDay); err != nil {
					return usageError{err}
				}
			}
			if change.set[3] = flags.Changed("bytes-per-month"); change.set[3] {
				if change.limits.BytesPerMonth, err = parseBytes("--bytes-per-month", bytesPerMonth); err != nil {
					return usageError{err}
				}
			}
			if change.set == [4]bool{} {
				return usageError{errors.New("give at least one of --max-leases, --rpm, --bytes-per-day and --bytes-per-month")}
			}
			if maxLeases < 0 || rpm < 0 {
				return usageError{errors.New("--max-leases and --rpm must not be negative")}
			}
			if subject == pharox.QuotaProxy && (maxLeases > 0 || rpm > 0) {
				return usageError{errors.New("a proxy's quota takes only --bytes-per-day and --bytes-per-month: its concurrency is its max_concurrency")}
			}
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				id, name, err := resolveQuotaSubject(ctx, b, subject, args[1], true)
				if err != nil {
					return err
				}
				q := pharox.Quota{Subject: subject, SubjectID: id}
				if old, err := b.Quota(ctx, subject, id); err == nil {
					q.QuotaLimits = old.QuotaLimits
				} else if !errors.Is(err, pharox.ErrQuotaNotFound) {
					return err
				}
				if change.set[0] {
					q.MaxConcurrentLeases = change.limits.MaxConcurrentLeases
				}
				if change.set[1] {
					q.RequestsPerMinute = change.limits.RequestsPerMinute
				}
				if change.set[2] {
					q.BytesPerDay = change.limits.BytesPerDay
				}
				if change.set[3] {
					q.BytesPerMonth = change.limits.BytesPerMonth
				}
				if q.IsZero() {
					return wrapMessage(fmt.Sprintf("that leaves %s %s no limit: delete its quota instead (pharox quota delete %s %s)",
						subject, name, subject, args[1]), pharox.ErrInvalidArgument)
				}
				out, err := b.SetQuota(ctx, q)
				if err != nil {
					return err
				}
				if tf.json {
					return printJSON(cmd.OutOrStdout(), api.FromQuota(out, time.Now()))
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "set the quota of %s: %s\n", quotaSubjectText(out), describeLimits(out.QuotaLimits))
				return err
			})
		},
	}
	sf := set.Flags()
	sf.IntVar(&maxLeases, "max-leases", 0, "at most this many active leases at once (consumers and pools)")
	sf.IntVar(&rpm, "rpm", 0, "at most this many acquisitions per minute (consumers and pools)")
	sf.StringVar(&bytesPerDay, "bytes-per-day", "", "traffic per UTC day, e.g. 10GB")
	sf.StringVar(&bytesPerMonth, "bytes-per-month", "", "traffic per calendar month, e.g. 1TB")

	list := &cobra.Command{
		Use:   "list",
		Short: "List the quotas with the traffic counted today and this month",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				qs, err := b.Quotas(ctx)
				if err != nil {
					return err
				}
				return printQuotas(cmd, tf, qs)
			})
		},
	}

	get := &cobra.Command{
		Use:   "get consumer|pool|proxy NAME",
		Short: "Show one quota",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			subject, err := parseQuotaSubject(args[0])
			if err != nil {
				return err
			}
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				id, name, err := resolveQuotaSubject(ctx, b, subject, args[1], false)
				if err != nil {
					return err
				}
				q, err := b.Quota(ctx, subject, id)
				if err != nil {
					return noQuotaError(subject, name, err)
				}
				if tf.json {
					return printJSON(cmd.OutOrStdout(), api.FromQuota(q, time.Now()))
				}
				return printQuotas(cmd, tf, []*pharox.Quota{q})
			})
		},
	}

	del := &cobra.Command{
		Use:   "delete consumer|pool|proxy NAME",
		Short: "Remove a quota: the subject is limited no more",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			subject, err := parseQuotaSubject(args[0])
			if err != nil {
				return err
			}
			return tf.withBackend(cmd, func(ctx context.Context, b backend) error {
				id, name, err := resolveQuotaSubject(ctx, b, subject, args[1], false)
				if err != nil {
					return err
				}
				if err := b.DeleteQuota(ctx, subject, id); err != nil {
					return noQuotaError(subject, name, err)
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "deleted the quota of %s\n", quotaSubjectText(&pharox.Quota{Subject: subject, Name: name}))
				return err
			})
		},
	}
	cmd.AddCommand(set, list, get, del)
	return cmd
}

// parseQuotaSubject reads the subject argument.
func parseQuotaSubject(arg string) (pharox.QuotaSubject, error) {
	s := pharox.QuotaSubject(strings.ToLower(strings.TrimSpace(arg)))
	if !s.Valid() {
		return "", usageError{fmt.Errorf("the quota's subject must be consumer, pool or proxy, got %q", arg)}
	}
	return s, nil
}

// resolveQuotaSubject finds the consumer, pool or proxy a command names
// and returns its id and its name (a proxy's address).
func resolveQuotaSubject(ctx context.Context, b backend, subject pharox.QuotaSubject, ref string, create bool) (uuid.UUID, string, error) {
	switch subject {
	case pharox.QuotaConsumer:
		c, err := resolveConsumer(ctx, b, ref, create)
		if err != nil {
			return uuid.Nil, "", err
		}
		return c.ID, c.Name, nil
	case pharox.QuotaPool:
		p, err := resolvePool(ctx, b, ref)
		if err != nil {
			return uuid.Nil, "", err
		}
		return p.ID, p.Name, nil
	}
	id, err := parseID("proxy id", ref)
	if err != nil {
		return uuid.Nil, "", err
	}
	p, err := b.GetProxy(ctx, id)
	if err != nil {
		return uuid.Nil, "", err
	}
	return p.ID, p.Address(), nil
}

// noQuotaError says in the CLI's words that a subject has no quota.
func noQuotaError(subject pharox.QuotaSubject, name string, err error) error {
	if errors.Is(err, pharox.ErrQuotaNotFound) {
		return wrapMessage("no quota is set for "+quotaSubjectText(&pharox.Quota{Subject: subject, Name: name}), err)
	}
	return err
}

// quotaSubjectText names a quota's subject in a sentence: consumer
// "scraper-1", proxy 10.0.0.1:8080.
func quotaSubjectText(q *pharox.Quota) string {
	name := q.Name
	if name == "" {
		name = q.SubjectID.String()
	}
	if q.Subject == pharox.QuotaProxy {
		return "proxy " + name
	}
	return fmt.Sprintf("%s %q", q.Subject, name)
}

// describeLimits lists the limits set, as the API names them.
func describeLimits(l pharox.QuotaLimits) string {
	var parts []string
	if l.MaxConcurrentLeases > 0 {
		parts = append(parts, fmt.Sprintf("%s=%d", pharox.LimitMaxConcurrentLeases, l.MaxConcurrentLeases))
	}
	if l.RequestsPerMinute > 0 {
		parts = append(parts, fmt.Sprintf("%s=%d", pharox.LimitRequestsPerMinute, l.RequestsPerMinute))
	}
	if l.BytesPerDay > 0 {
		parts = append(parts, fmt.Sprintf("%s=%d", pharox.LimitBytesPerDay, l.BytesPerDay))
	}
	if l.BytesPerMonth > 0 {
		parts = append(parts, fmt.Sprintf("%s=%d", pharox.LimitBytesPerMonth, l.BytesPerMonth))
	}
	return strings.Join(parts, ", ")
}

func printQuotas(cmd *cobra.Command, tf *targetFlags, qs []*pharox.Quota) error {
	now := time.Now()
	if tf.json {
		out := make([]api.Quota, len(qs))
		for i, q := range qs {
			out[i] = api.FromQuota(q, now)
		}
		return printJSON(cmd.OutOrStdout(), out)
	}
	limit := func(n int) string {
		if n <= 0 {
			return "-"
		}
		return strconv.Itoa(n)
	}
	used := func(n, of int64) string {
		if of <= 0 {
			return formatBytes(n)
		}
		return formatBytes(n) + " / " + formatBytes(of)
	}
	t := newTable(cmd.OutOrStdout(), "SUBJECT", "NAME", "MAX_LEASES", "RPM", "TODAY", "THIS_MONTH", "STATE")
	for _, q := range qs {
		name := q.Name
		if name == "" {
			name = q.SubjectID.String()
		}
		state := "ok"
		if until := q.ExhaustedUntil(now); !until.IsZero() {
			state = "over until " + formatTime(until)
		}
		t.row(string(q.Subject), name, limit(q.MaxConcurrentLeases), limit(q.RequestsPerMinute),
			used(q.BytesToday, q.BytesPerDay), used(q.BytesThisMonth, q.BytesPerMonth), state)
	}
	return t.flush()
}
