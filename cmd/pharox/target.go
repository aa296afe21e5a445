package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/storage/open"
)

// Environment variables that stand in for the target flags.
const (
	envServer  = "PHAROX_SERVER"
	envAPIKey  = "PHAROX_API_KEY"
	envStorage = "PHAROX_STORAGE"
)

// createsStore annotates the commands that may create a SQLite database
// (pool create, proxy import); the others refuse a file that does not
// exist rather than answer from a new empty one.
const createsStore = "pharox/creates-store"

// openStorage opens a store for direct mode. Tests replace it to run
// several commands against one in-process store.
var openStorage = open.Open

// targetFlags chooses what the operator commands talk to: a pharox server
// (remote mode, through the client) or a storage URL (direct mode, through
// a Manager over the store).
type targetFlags struct {
	server  string
	apiKey  string
	storage string
	json    bool
}

// register adds the target flags to cmd and its subcommands.
func (f *targetFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.server, "server", "", "pharox server URL, e.g. http://127.0.0.1:8080 (env "+envServer+")")
	pf.StringVar(&f.apiKey, "api-key", "", "API key for --server; prefer the env var, flags show in ps (env "+envAPIKey+")")
	pf.StringVar(&f.storage, "storage", "", "storage URL for direct mode, e.g. sqlite://pharox.db (env "+envStorage+")")
	pf.BoolVar(&f.json, "json", false, "print JSON instead of tables")
}

// resolve applies the environment: explicit flags win over env vars, and
// exactly one of server and storage must be chosen.
func (f *targetFlags) resolve(cmd *cobra.Command) (server, storage, apiKey string, err error) {
	changed := func(name string) bool {
		fl := cmd.Flags().Lookup(name)
		return fl != nil && fl.Changed
	}
	server, storage, apiKey = f.server, f.storage, f.apiKey
	if !changed("api-key") {
		apiKey = os.Getenv(envAPIKey)
	}
	switch cs, cst := changed("server"), changed("storage"); {
	case cs && cst:
		return "", "", "", errors.New("--server and --storage are mutually exclusive: talk to a server or open a store, not both")
	case cs || cst:
		// One explicit flag decides, whatever the environment says.
	default:
		server, storage = os.Getenv(envServer), os.Getenv(envStorage)
		if server != "" && storage != "" {
			return "", "", "", fmt.Errorf("both %s and %s are set: unset one or pass --server or --storage", envServer, envStorage)
		}
	}
	server, storage = strings.TrimSpace(server), strings.TrimSpace(storage)
	if server == "" && storage == "" {
		return "", "", "", fmt.Errorf("no target: pass --server URL (or set %s) to use a pharox server, or --storage URL (or set %s) to open a store directly", envServer, envStorage)
	}
	return server, storage, apiKey, nil
}

// newServerClient is client.New for a --server URL, refusing one with
// credentials in the CLI's words: the client's own error names its Go
// option, and the key belongs in --api-key.
func newServerClient(server string, opts ...client.Option) (*client.Client, error) {
	if u, err := url.Parse(strings.TrimSpace(server)); err == nil && u.User != nil {
		return nil, fmt.Errorf("%w: --server %s carries credentials: give the URL without them and the key with --api-key or PHAROX_API_KEY",
			pharox.ErrInvalidArgument, u.Redacted())
	}
	return client.New(server, opts...)
}

// open returns the backend the flags choose. The caller closes it.
func (f *targetFlags) open(cmd *cobra.Command) (backend, error) {
	server, storage, apiKey, err := f.resolve(cmd)
	if err != nil {
		return nil, err
	}
	if server != "" {
		opts := []client.Option{client.WithUserAgent("pharox-cli")}
		if apiKey != "" {
			opts = append(opts, client.WithAPIKey(apiKey))
		}
		c, err := newServerClient(server, opts...)
		if err != nil {
			return nil, err
		}
		return &remoteBackend{c: c}, nil
	}
	prepare := requireSQLiteFile
	if cmd.Annotations[createsStore] != "" {
		prepare = createSQLiteFile
	}
	if err := prepare(storage); err != nil {
		return nil, err
	}
	store, err := openStorage(cmd.Context(), storage)
	if err != nil {
		return nil, err
	}
	if scheme, _, _ := strings.Cut(strings.ToLower(storage), "://"); scheme == "memory" || scheme == "mem" {
		fmt.Fprintln(cmd.ErrOrStderr(), "pharox: note: a memory:// store lives only as long as this command; nothing is kept")
	}
	return &directBackend{store: store, mgr: pharox.NewManager(store)}, nil
}

// backend is what the operator commands need from a deployment, whether
// reached through its HTTP API or by opening its store.
type backend interface {
	CreatePool(ctx context.Context, name, description string) (*pharox.Pool, error)
	ListPools(ctx context.Context) ([]*pharox.Pool, error)
	GetPool(ctx context.Context, id uuid.UUID) (*pharox.Pool, error)
	GetPoolByName(ctx context.Context, name string) (*pharox.Pool, error)
	DeletePool(ctx context.Context, id uuid.UUID) error
	PoolStats(ctx context.Context, pool *pharox.Pool) (*pharox.PoolStats, error)

	// AddProxies stores proxies into pool, all or none.
	AddProxies(ctx context.Context, pool *pharox.Pool, proxies []pharox.Proxy) ([]*pharox.Proxy, error)
	ListProxies(ctx context.Context, pool *pharox.Pool) ([]*pharox.Proxy, error)
	SetProxyStatus(ctx context.Context, pool *pharox.Pool, id uuid.UUID, status pharox.ProxyStatus) (*pharox.Proxy, error)
	DeleteProxy(ctx context.Context, pool *pharox.Pool, id uuid.UUID) error

	// Acquire leases from pool; wait > 0 waits that long for a free slot.
	Acquire(ctx context.Context, pool *pharox.Pool, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error)
	Release(ctx context.Context, id uuid.UUID) (*pharox.Lease, error)
	ListLeases(ctx context.Context, q pharox.LeaseQuery) ([]*pharox.Lease, error)

	// PoolTargets and ProxyTargets read per-site health (ErrUnsupported
	// when the store keeps none).
	PoolTargets(ctx context.Context, pool *pharox.Pool) ([]*pharox.TargetStats, error)
	ProxyTargets(ctx context.Context, pool *pharox.Pool, id uuid.UUID) ([]*pharox.TargetState, error)

	// Consumers, usage and quotas, as the Manager names them.
	EnsureConsumer(ctx context.Context, name string) (*pharox.Consumer, error)
	ListConsumers(ctx context.Context) ([]*pharox.Consumer, error)
	GetProxy(ctx context.Context, id uuid.UUID) (*pharox.Proxy, error)
	Usage(ctx context.Context, q pharox.UsageQuery) ([]pharox.UsageRow, error)
	SetQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error)
	Quota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (*pharox.Quota, error)
	Quotas(ctx context.Context) ([]*pharox.Quota, error)
	DeleteQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) error

	Close() error
}

// resolvePool finds a pool by id or, failing that, by name: a pool may be
// named like a UUID.
func resolvePool(ctx context.Context, b backend, ref string) (*pharox.Pool, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return nil, fmt.Errorf("%w: pool name or id is empty", pharox.ErrInvalidArgument)
	}
	if id, err := uuid.Parse(ref); err == nil {
		p, err := b.GetPool(ctx, id)
		if err == nil || !errors.Is(err, pharox.ErrPoolNotFound) {
			return p, err
		}
	}
	p, err := b.GetPoolByName(ctx, ref)
	if errors.Is(err, pharox.ErrPoolNotFound) {
		return nil, fmt.Errorf("pool %q: %w", ref, pharox.ErrPoolNotFound)
	}
	return p, err
}

// directBackend works on a store in this process.
type directBackend struct {
	store pharox.Storage
	mgr   *pharox.Manager
}

func (d *directBackend) CreatePool(ctx context.Context, name, description string) (*pharox.Pool, error) {
	p := pharox.Pool{Name: strings.TrimSpace(name), Description: description}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return d.store.CreatePool(ctx, p)
}

func (d *directBackend) ListPools(ctx context.Context) ([]*pharox.Pool, error) {
	return d.store.ListPools(ctx)
}

func (d *directBackend) GetPool(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	return d.store.GetPool(ctx, id)
}

func (d *directBackend) GetPoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	return d.store.GetPoolByName(ctx, name)
}

func (d *directBackend) DeletePool(ctx context.Context, id uuid.UUID) error {
	return d.store.DeletePool(ctx, id)
}

func (d *directBackend) PoolStats(ctx context.Context, pool *pharox.Pool) (*pharox.PoolStats, error) {
	return d.store.GetPoolStats(ctx, pool.Name)
}

func (d *directBackend) AddProxies(ctx context.Context, pool *pharox.Pool, proxies []pharox.Proxy) ([]*pharox.Proxy, error) {
	in := make([]pharox.Proxy, len(proxies))
	for i := range proxies {
		in[i] = proxies[i]
		in[i].PoolID = pool.ID
	}
	return d.store.AddProxies(ctx, in)
}

func (d *directBackend) ListProxies(ctx context.Context, pool *pharox.Pool) ([]*pharox.Proxy, error) {
	return d.store.ListProxies(ctx, pool.ID)
}

// proxyOf checks that the proxy exists in pool: the HTTP API names proxies
// under their pool, and direct mode answers the same.
func (d *directBackend) proxyOf(ctx context.Context, pool *pharox.Pool, id uuid.UUID) error {
	p, err := d.store.GetProxy(ctx, id)
	if err != nil {
		return err
	}
	if p.PoolID != pool.ID {
		return fmt.Errorf("proxy %s is not in pool %q: %w", id, pool.Name, pharox.ErrProxyNotFound)
	}
	return nil
}

func (d *directBackend) SetProxyStatus(ctx context.Context, pool *pharox.Pool, id uuid.UUID, status pharox.ProxyStatus) (*pharox.Proxy, error) {
	if err := d.proxyOf(ctx, pool, id); err != nil {
		return nil, err
	}
	return d.store.SetProxyStatus(ctx, id, status)
}

func (d *directBackend) DeleteProxy(ctx context.Context, pool *pharox.Pool, id uuid.UUID) error {
	if err := d.proxyOf(ctx, pool, id); err != nil {
		return err
	}
	return d.store.DeleteProxy(ctx, id)
}

func (d *directBackend) Acquire(ctx context.Context, pool *pharox.Pool, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error) {
	if wait <= 0 {
		return d.mgr.Acquire(ctx, pool.Name, opts)
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return d.mgr.AcquireWait(wctx, pool.Name, opts)
}

// Release answers like the HTTP API: a lease that already ended is
// returned as it ended, without an error.
func (d *directBackend) Release(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	l, err := d.mgr.Release(ctx, id)
	if errors.Is(err, pharox.ErrLeaseNotActive) {
		if ended, gerr := d.store.GetLease(ctx, id); gerr == nil {
			return ended, nil
		}
	}
	return l, err
}

func (d *directBackend) ListLeases(ctx context.Context, q pharox.LeaseQuery) ([]*pharox.Lease, error) {
	return d.store.ListLeases(ctx, q)
}

func (d *directBackend) PoolTargets(ctx context.Context, pool *pharox.Pool) ([]*pharox.TargetStats, error) {
	return d.mgr.PoolTargetStats(ctx, pool.ID)
}

func (d *directBackend) ProxyTargets(ctx context.Context, pool *pharox.Pool, id uuid.UUID) ([]*pharox.TargetState, error) {
	if err := d.proxyOf(ctx, pool, id); err != nil {
		return nil, err
	}
	return d.mgr.TargetStates(ctx, id)
}

func (d *directBackend) EnsureConsumer(ctx context.Context, name string) (*pharox.Consumer, error) {
	return d.mgr.EnsureConsumer(ctx, name)
}

func (d *directBackend) ListConsumers(ctx context.Context) ([]*pharox.Consumer, error) {
	return d.store.ListConsumers(ctx)
}

func (d *directBackend) GetProxy(ctx context.Context, id uuid.UUID) (*pharox.Proxy, error) {
	return d.store.GetProxy(ctx, id)
}

func (d *directBackend) Usage(ctx context.Context, q pharox.UsageQuery) ([]pharox.UsageRow, error) {
	return d.mgr.Usage(ctx, q)
}

// SetQuota and DeleteQuota record their change in the audit log, as the
// server does, with the actor "cli".
func (d *directBackend) SetQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error) {
	out, err := d.mgr.SetQuota(ctx, q)
	if err == nil {
		d.audit(ctx, "quota.set", out, "set the quota of "+quotaSubjectText(out)+": "+describeLimits(out.QuotaLimits))
	}
	return out, err
}

func (d *directBackend) Quota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (*pharox.Quota, error) {
	return d.mgr.Quota(ctx, subject, id)
}

func (d *directBackend) Quotas(ctx context.Context) ([]*pharox.Quota, error) {
	return d.mgr.Quotas(ctx)
}

func (d *directBackend) DeleteQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) error {
	q, err := d.mgr.Quota(ctx, subject, id)
	if err != nil {
		return err
	}
	if err := d.mgr.DeleteQuota(ctx, subject, id); err != nil {
		return err
	}
	d.audit(ctx, "quota.delete", q, "deleted the quota of "+quotaSubjectText(q))
	return nil
}

// audit records a quota change; a failure to record is not the user's
// error, the change is made.
func (d *directBackend) audit(ctx context.Context, action string, q *pharox.Quota, detail string) {
	_ = d.store.AppendAudit(ctx, pharox.AuditEntry{ID: uuid.New(), Actor: cliActor, Action: action,
		TargetKind: string(q.Subject), TargetID: q.SubjectID.String(), Detail: detail})
}

func (d *directBackend) Close() error { return d.store.Close() }

// remoteBackend talks to a pharox server.
type remoteBackend struct{ c *client.Client }

func (r *remoteBackend) CreatePool(ctx context.Context, name, description string) (*pharox.Pool, error) {
	return r.c.CreatePool(ctx, strings.TrimSpace(name), description)
}

func (r *remoteBackend) ListPools(ctx context.Context) ([]*pharox.Pool, error) {
	return r.c.ListPools(ctx)
}

func (r *remoteBackend) GetPool(ctx context.Context, id uuid.UUID) (*pharox.Pool, error) {
	return r.c.GetPool(ctx, id)
}

func (r *remoteBackend) GetPoolByName(ctx context.Context, name string) (*pharox.Pool, error) {
	return r.c.GetPoolByName(ctx, name)
}

func (r *remoteBackend) DeletePool(ctx context.Context, id uuid.UUID) error {
	return r.c.DeletePool(ctx, id)
}

func (r *remoteBackend) PoolStats(ctx context.Context, pool *pharox.Pool) (*pharox.PoolStats, error) {
	return r.c.PoolStats(ctx, pool.ID)
}

func (r *remoteBackend) AddProxies(ctx context.Context, pool *pharox.Pool, proxies []pharox.Proxy) ([]*pharox.Proxy, error) {
	return r.c.ImportProxies(ctx, pool.ID, proxies)
}

func (r *remoteBackend) ListProxies(ctx context.Context, pool *pharox.Pool) ([]*pharox.Proxy, error) {
	return r.c.ListProxies(ctx, pool.ID)
}

func (r *remoteBackend) SetProxyStatus(ctx context.Context, pool *pharox.Pool, id uuid.UUID, status pharox.ProxyStatus) (*pharox.Proxy, error) {
	return r.c.SetProxyStatus(ctx, pool.ID, id, status)
}

func (r *remoteBackend) DeleteProxy(ctx context.Context, pool *pharox.Pool, id uuid.UUID) error {
	return r.c.DeleteProxy(ctx, pool.ID, id)
}

func (r *remoteBackend) Acquire(ctx context.Context, pool *pharox.Pool, opts *pharox.AcquireOptions, wait time.Duration) (*pharox.Lease, error) {
	req, err := client.NewAcquireRequest(pool.Name, opts)
	if err != nil {
		return nil, err
	}
	req.PoolName, req.PoolID = "", pool.ID.String()
	if wait > 0 {
		req.WaitSeconds = wait.Seconds()
	}
	return r.c.Acquire(ctx, req)
}

func (r *remoteBackend) Release(ctx context.Context, id uuid.UUID) (*pharox.Lease, error) {
	return r.c.Release(ctx, id)
}

func (r *remoteBackend) ListLeases(ctx context.Context, q pharox.LeaseQuery) ([]*pharox.Lease, error) {
	return r.c.ListLeases(ctx, q)
}

func (r *remoteBackend) PoolTargets(ctx context.Context, pool *pharox.Pool) ([]*pharox.TargetStats, error) {
	return r.c.PoolTargets(ctx, pool.ID)
}

func (r *remoteBackend) ProxyTargets(ctx context.Context, pool *pharox.Pool, id uuid.UUID) ([]*pharox.TargetState, error) {
	return r.c.ProxyTargets(ctx, pool.ID, id)
}

func (r *remoteBackend) EnsureConsumer(ctx context.Context, name string) (*pharox.Consumer, error) {
	return r.c.EnsureConsumer(ctx, name)
}

func (r *remoteBackend) ListConsumers(ctx context.Context) ([]*pharox.Consumer, error) {
	return r.c.ListConsumers(ctx)
}

// GetProxy finds a proxy by id in the pools the key sees: the API names
// proxies under their pool.
func (r *remoteBackend) GetProxy(ctx context.Context, id uuid.UUID) (*pharox.Proxy, error) {
	pools, err := r.c.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range pools {
		px, err := r.c.GetProxy(ctx, p.ID, id)
		if err == nil || !errors.Is(err, pharox.ErrProxyNotFound) {
			return px, err
		}
	}
	return nil, fmt.Errorf("proxy %s: %w", id, pharox.ErrProxyNotFound)
}

func (r *remoteBackend) Usage(ctx context.Context, q pharox.UsageQuery) ([]pharox.UsageRow, error) {
	return r.c.Usage(ctx, q)
}

func (r *remoteBackend) SetQuota(ctx context.Context, q pharox.Quota) (*pharox.Quota, error) {
	return r.c.SetQuota(ctx, q)
}

func (r *remoteBackend) Quota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) (*pharox.Quota, error) {
	return r.c.Quota(ctx, subject, id)
}

func (r *remoteBackend) Quotas(ctx context.Context) ([]*pharox.Quota, error) {
	return r.c.Quotas(ctx)
}

func (r *remoteBackend) DeleteQuota(ctx context.Context, subject pharox.QuotaSubject, id uuid.UUID) error {
	return r.c.DeleteQuota(ctx, subject, id)
}

func (r *remoteBackend) Close() error { return nil }

// withBackend opens the target, runs fn and closes the target.
func (f *targetFlags) withBackend(cmd *cobra.Command, fn func(ctx context.Context, b backend) error) (err error) {
	b, err := f.open(cmd)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := b.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return fn(cmd.Context(), b)
}

// Output helpers.

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(headers...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		// A tab or newline in a value would break the columns.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(c)
		if cells[i] == "" {
			cells[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// formatTime renders a timestamp for tables: UTC, seconds.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func formatTimePtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return formatTime(*t)
}

// parseID parses a UUID argument with a clear error.
func parseID(what, s string) (uuid.UUID, error) {
	id, err := uuid.Parse(strings.TrimSpace(s))
	if err != nil {
		if len(s) > 64 {
			s = s[:64] + "..."
		}
		return uuid.Nil, fmt.Errorf("%w: %s %q is not a valid UUID", pharox.ErrInvalidArgument, what, s)
	}
	return id, nil
}
