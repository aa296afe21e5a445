package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/client"
)

func init() {
	rootCmd.AddCommand(newKeyCmd())
	rootCmd.AddCommand(newAuditCmd())
}

const keyHelp = `Create, list, rotate and revoke the API keys kept in the store.

Every serve sharing the store accepts a new key, and refuses a revoked or
rotated one, within a few seconds. A key has a role:
  admin     everything
  consumer  leases (acquire, renew, release, outcomes) as its consumers,
            from its pools, and on its own leases only
  viewer    reads everything (dashboards), writes nothing
A consumer key is bound to --consumer names (the first is its default;
without any it acts as a consumer named like the key) and to --pool names
(without any, every pool). The secret is printed once, at creation and
rotation: the store keeps only its SHA-256 digest.

Talk to a server (--server URL with an admin key in --api-key or
PHAROX_API_KEY) or open the store directly (--storage URL). Keys from
serve's flags, environment or config file (bootstrap keys) are not listed
here and keep working.`

// keyBackend is what the key commands need, over a server or a store.
type keyBackend interface {
	create(ctx context.Context, req api.CreateKeyRequest) (*api.CreatedKey, error)
	list(ctx context.Context) ([]*pharox.APIKey, error)
	rotate(ctx context.Context, ref string) (*api.CreatedKey, error)
	revoke(ctx context.Context, ref string) (*pharox.APIKey, error)
	audit(ctx context.Context, q pharox.AuditQuery) ([]*pharox.AuditEntry, error)
}

// errNoKeyStore says that a store keeps no keys.
var errNoKeyStore = fmt.Errorf("%w: this store does not keep API keys yet; use the keys of serve's configuration", pharox.ErrUnsupported)

// keysOf returns the key operations of a backend.
func keysOf(b backend) (keyBackend, error) {
	switch b := b.(type) {
	case *remoteBackend:
		return remoteKeys{b.c}, nil
	case *directBackend:
		ks, ok := b.store.(pharox.KeyStore)
		if !ok {
			return nil, errNoKeyStore
		}
		return directKeys{ks}, nil
	}
	return nil, fmt.Errorf("%w: keys are not managed through %T", pharox.ErrUnsupported, b)
}

type remoteKeys struct{ c *client.Client }

func (r remoteKeys) create(ctx context.Context, req api.CreateKeyRequest) (*api.CreatedKey, error) {
	return r.c.CreateKey(ctx, req)
}
func (r remoteKeys) list(ctx context.Context) ([]*pharox.APIKey, error) { return r.c.ListKeys(ctx) }
func (r remoteKeys) rotate(ctx context.Context, ref string) (*api.CreatedKey, error) {
	return r.c.RotateKey(ctx, ref)
}
func (r remoteKeys) revoke(ctx context.Context, ref string) (*pharox.APIKey, error) {
	return r.c.RevokeKey(ctx, ref)
}
func (r remoteKeys) audit(ctx context.Context, q pharox.AuditQuery) ([]*pharox.AuditEntry, error) {
	return r.c.ListAudit(ctx, q)
}

// directKeys works on the store; its audit entries name the actor "cli".
type directKeys struct{ ks pharox.KeyStore }

// cliActor is the audit actor of changes made by opening the store.
const cliActor = "cli"

func (d directKeys) record(ctx context.Context, action string, k *pharox.APIKey, detail string) {
	// The change is made; a failure to record it is not the user's error.
	_ = d.ks.AppendAudit(ctx, pharox.AuditEntry{ID: uuid.New(), Actor: cliActor, Action: action,
		TargetKind: "key", TargetID: k.ID.String(), Detail: detail})
}

func (d directKeys) create(ctx context.Context, req api.CreateKeyRequest) (*api.CreatedKey, error) {
	secret, err := pharox.NewAPIKeySecret()
	if err != nil {
		return nil, err
	}
	k := pharox.APIKey{Name: strings.TrimSpace(req.Name), Role: pharox.KeyRole(req.Role), Consumers: req.Consumers,
		Pools: req.Pools, Digest: pharox.APIKeyDigest(secret), Hint: pharox.APIKeyHint(secret)}
	if req.ExpiresInSeconds != nil {
		t := time.Now().Add(time.Duration(*req.ExpiresInSeconds * float64(time.Second)))
		k.ExpiresAt = &t
	} else if req.ExpiresAt != nil {
		t := req.ExpiresAt.Time
		k.ExpiresAt = &t
	}
	if err := k.Validate(); err != nil {
		return nil, err
	}
	created, err := d.ks.CreateAPIKey(ctx, k)
	if err != nil {
		return nil, err
	}
	d.record(ctx, "key.create", created, fmt.Sprintf("created %s key %q", created.Role, created.Name))
	return &api.CreatedKey{APIKey: api.FromAPIKey(created), Secret: secret}, nil
}

func (d directKeys) list(ctx context.Context) ([]*pharox.APIKey, error) { return d.ks.ListAPIKeys(ctx) }

func (d directKeys) find(ctx context.Context, ref string) (*pharox.APIKey, error) {
	if id, err := uuid.Parse(ref); err == nil {
		k, err := d.ks.GetAPIKey(ctx, id)
		if err == nil || !errors.Is(err, pharox.ErrKeyNotFound) {
			return k, err
		}
	}
	return d.ks.GetAPIKeyByName(ctx, ref)
}

func (d directKeys) rotate(ctx context.Context, ref string) (*api.CreatedKey, error) {
	k, err := d.find(ctx, ref)
	if err != nil {
		return nil, err
	}
	secret, err := pharox.NewAPIKeySecret()
	if err != nil {
		return nil, err
	}
	rotated, err := d.ks.RotateAPIKey(ctx, k.ID, pharox.APIKeyDigest(secret), pharox.APIKeyHint(secret))
	if err != nil {
		return nil, err
	}
	d.record(ctx, "key.rotate", k, fmt.Sprintf("rotated key %q", k.Name))
	return &api.CreatedKey{APIKey: api.FromAPIKey(rotated), Secret: secret}, nil
}

func (d directKeys) revoke(ctx context.Context, ref string) (*pharox.APIKey, error) {
	k, err := d.find(ctx, ref)
	if err != nil {
		return nil, err
	}
	revoked, err := d.ks.RevokeAPIKey(ctx, k.ID)
	if err == nil && k.RevokedAt == nil {
		d.record(ctx, "key.revoke", k, fmt.Sprintf("revoked key %q", k.Name))
	}
	return revoked, err
}

func (d directKeys) audit(ctx context.Context, q pharox.AuditQuery) ([]*pharox.AuditEntry, error) {
	return d.ks.ListAudit(ctx, q)
}

// withKeys opens the target and runs fn on its key operations.
func (f *targetFlags) withKeys(cmd *cobra.Command, fn func(ctx context.Context, k keyBackend) error) error {
	return f.withBackend(cmd, func(ctx context.Context, b backend) error {
		k, err := keysOf(b)
		if err != nil {
			return err
		}
		return fn(ctx, k)
	})
}

// keyError says in the CLI's words what went wrong with a key reference.
func keyError(ref string, err error) error {
	switch {
	case errors.Is(err, pharox.ErrKeyNotFound):
		return wrapMessage(fmt.Sprintf("no API key has id or name %q", ref), err)
	case errors.Is(err, pharox.ErrKeyRevoked):
		return wrapMessage(fmt.Sprintf("API key %q is revoked: create a new one instead", ref), err)
	}
	return err
}

func newKeyCmd() *cobra.Command {
	tf := &targetFlags{}
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Create, list, rotate and revoke API keys kept in the store",
		Long:  keyHelp,
	}
	tf.register(cmd)

	var (
		role             string
		consumers, pools []string
		expiresIn        time.Duration
		expiresAt        string
	)
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a key and print its secret (shown this once)",
		Example: `  pharox key create scraper-eu --consumer scraper-eu --pool eu-residential
  pharox key create grafana --role viewer
  pharox key create ops --role admin --expires-in 720h`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.CreateKeyRequest{Name: strings.TrimSpace(args[0]), Role: strings.ToLower(strings.TrimSpace(role)),
				Consumers: consumers, Pools: pools}
			if !pharox.KeyRole(req.Role).Valid() {
				return usageError{fmt.Errorf("--role must be admin, consumer or viewer, got %q", role)}
			}
			switch {
			case expiresIn != 0 && expiresAt != "":
				return usageError{errors.New("give --expires-in or --expires-at, not both")}
			case expiresIn < 0:
				return usageError{fmt.Errorf("--expires-in must be positive, got %s", expiresIn)}
			case expiresIn > 0:
				req.ExpiresInSeconds = api.ExpiresIn(expiresIn)
			case expiresAt != "":
				t, err := time.Parse(time.RFC3339, expiresAt)
				if err != nil {
					return usageError{fmt.Errorf("--expires-at must be an RFC 3339 time like 2027-01-31T00:00:00Z, got %q", expiresAt)}
				}
				if !t.After(time.Now()) {
					return usageError{fmt.Errorf("--expires-at %s is not in the future", expiresAt)}
				}
				req.ExpiresAt = &api.Time{Time: t}
			}
			return tf.withKeys(cmd, func(ctx context.Context, kb keyBackend) error {
				k, err := kb.create(ctx, req)
				if errors.Is(err, pharox.ErrAlreadyExists) {
					return wrapMessage(fmt.Sprintf("an API key named %q already exists (revoked keys keep their names)", req.Name), err)
				}
				if err != nil {
					return err
				}
				return printSecret(cmd, tf, "created", k)
			})
		},
	}
	cf := create.Flags()
	cf.StringVar(&role, "role", "consumer", "admin, consumer or viewer")
	cf.StringSliceVar(&consumers, "consumer", nil, "consumer name a consumer key acts as, repeatable; the first is its default")
	cf.StringSliceVar(&pools, "pool", nil, "pool name a consumer key may lease from, repeatable (default every pool)")
	cf.DurationVar(&expiresIn, "expires-in", 0, "the key expires this long from now, e.g. 720h")
	cf.StringVar(&expiresAt, "expires-at", "", "the key expires at this RFC 3339 time")

	list := &cobra.Command{
		Use:   "list",
		Short: "List the stored keys (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return tf.withKeys(cmd, func(ctx context.Context, kb keyBackend) error {
				keys, err := kb.list(ctx)
				if err != nil {
					return err
				}
				if tf.json {
					out := make([]api.APIKey, len(keys))
					for i, k := range keys {
						out[i] = api.FromAPIKey(k)
					}
					return printJSON(cmd.OutOrStdout(), out)
				}
				t := newTable(cmd.OutOrStdout(), "ID", "NAME", "ROLE", "HINT", "CONSUMERS", "POOLS", "STATE", "EXPIRES", "LAST USED")
				now := time.Now()
				for _, k := range keys {
					state := "active"
					if err := k.Usable(now); errors.Is(err, pharox.ErrKeyRevoked) {
						state = "revoked"
					} else if err != nil {
						state = "expired"
					}
					t.row(k.ID.String(), k.Name, string(k.Role), k.Hint+"...", strings.Join(k.Consumers, ","),
						strings.Join(k.Pools, ","), state, formatTimePtr(k.ExpiresAt), formatTimePtr(k.LastUsedAt))
				}
				return t.flush()
			})
		},
	}

	rotate := &cobra.Command{
		Use:   "rotate KEY",
		Short: "Give a key (by name or id) a new secret, printed once; the old one stops working",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return tf.withKeys(cmd, func(ctx context.Context, kb keyBackend) error {
				k, err := kb.rotate(ctx, args[0])
				if err != nil {
					return keyError(args[0], err)
				}
				return printSecret(cmd, tf, "rotated", k)
			})
		},
	}

	revoke := &cobra.Command{
		Use:   "revoke KEY",
		Short: "Revoke a key (by name or id): every serve sharing the store refuses it within seconds",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return tf.withKeys(cmd, func(ctx context.Context, kb keyBackend) error {
				k, err := kb.revoke(ctx, args[0])
				if err != nil {
					return keyError(args[0], err)
				}
				if tf.json {
					return printJSON(cmd.OutOrStdout(), api.FromAPIKey(k))
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "revoked key %s (%s)\n", k.Name, k.ID)
				return err
			})
		},
	}
	cmd.AddCommand(create, list, rotate, revoke)
	return cmd
}

// printSecret prints a created or rotated key with its secret, once.
func printSecret(cmd *cobra.Command, tf *targetFlags, what string, k *api.CreatedKey) error {
	if tf.json {
		return printJSON(cmd.OutOrStdout(), k)
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "%s %s key %s (%s)\n", what, k.Role, k.Name, k.ID)
	if len(k.Consumers) > 0 {
		fmt.Fprintf(w, "consumers: %s\n", strings.Join(k.Consumers, ", "))
	}
	if len(k.Pools) > 0 {
		fmt.Fprintf(w, "pools: %s\n", strings.Join(k.Pools, ", "))
	}
	if k.ExpiresAt != nil {
		fmt.Fprintf(w, "expires: %s\n", formatTime(k.ExpiresAt.Time))
	}
	_, err := fmt.Fprintf(w, "secret: %s\n(shown once: the store keeps only its digest)\n", k.Secret)
	return err
}

const auditHelp = `List recorded admin actions, newest first: pool, proxy and key changes,
status overrides and releases of consumers' leases by admins, each with
the acting key's name ("bootstrap" for serve's configured keys, "cli" for
changes made by opening the store).`

func newAuditCmd() *cobra.Command {
	tf := &targetFlags{}
	var (
		since, until, actor, action string
		limit                       int
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "List recorded admin actions, newest first",
		Long:  auditHelp,
		Example: `  pharox audit --since 24h
  pharox audit --actor ops --action key.revoke`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := pharox.AuditQuery{Actor: actor, Action: action, Limit: limit}
			var err error
			if q.Since, err = parseSince("--since", since); err != nil {
				return usageError{err}
			}
			if q.Until, err = parseSince("--until", until); err != nil {
				return usageError{err}
			}
			if limit < 0 || limit > pharox.MaxAuditLimit {
				return usageError{fmt.Errorf("--limit must be from 1 to %d, got %d", pharox.MaxAuditLimit, limit)}
			}
			return tf.withKeys(cmd, func(ctx context.Context, kb keyBackend) error {
				entries, err := kb.audit(ctx, q)
				if err != nil {
					return err
				}
				return printAudit(cmd.OutOrStdout(), tf, entries)
			})
		},
	}
	tf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&since, "since", "", "entries at or after this time: RFC 3339, or a duration ago like 24h")
	f.StringVar(&until, "until", "", "entries before this time: RFC 3339, or a duration ago")
	f.StringVar(&actor, "actor", "", "only this key name's actions")
	f.StringVar(&action, "action", "", "only this action, e.g. key.revoke, pool.delete, proxy.status, lease.release")
	f.IntVar(&limit, "limit", 0, "at most this many (default 100, max 1000)")
	return cmd
}

// parseSince reads an RFC 3339 time or a duration before now.
func parseSince(flag, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s must be an RFC 3339 time like 2027-01-31T00:00:00Z or a duration like 24h, got %q", flag, v)
	}
	return t, nil
}

func printAudit(w io.Writer, tf *targetFlags, entries []*pharox.AuditEntry) error {
	if tf.json {
		out := make([]api.AuditEntry, len(entries))
		for i, e := range entries {
			out[i] = api.FromAuditEntry(e)
		}
		return printJSON(w, out)
	}
	t := newTable(w, "AT", "ACTOR", "ACTION", "TARGET", "DETAIL")
	for _, e := range entries {
		t.row(formatTime(e.At), e.Actor, e.Action, e.TargetKind+" "+e.TargetID, e.Detail)
	}
	return t.flush()
}
