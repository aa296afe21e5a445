package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/health"
	"github.com/pharox/pharox/observe"
	"github.com/pharox/pharox/server"
	"github.com/pharox/pharox/storage/open"
)

// serveConfig is everything `pharox serve` can be told, from (in rising
// precedence) defaults, a JSON config file, PHAROX_* environment variables
// and flags.
type serveConfig struct {
	Listen         string        `json:"listen"`
	Storage        string        `json:"storage"`
	AdminKeys      []string      `json:"admin_keys"`
	AdminKeyFile   string        `json:"admin_key_file"`
	ConsumerKeys   []string      `json:"consumer_keys"`
	SweepInterval  serveDuration `json:"sweep_interval"`
	HealthTarget   string        `json:"health_target"`
	LeaseRetention serveDuration `json:"lease_retention"`
	UsageRetention serveDuration `json:"usage_retention"`
	ReapInterval   serveDuration `json:"reap_interval"`
	MaxWait        serveDuration `json:"max_wait"`
	AccessLog      *bool         `json:"access_log"`
	LogFormat      string        `json:"log_format"`
	LogLevel       string        `json:"log_level"`
	// MetricsRequireKey is accepted for old config files and ignored:
	// /metrics needs a key unless MetricsPublic.
	MetricsRequireKey     *bool `json:"metrics_require_key"`
	MetricsPublic         *bool `json:"metrics_public"`
	MetricsConsumerLabels *bool `json:"metrics_consumer_labels"`
	MaxConsumersPerKey    *int  `json:"max_consumers_per_key"`
}

// serveDuration reads "90s"-style strings in the config file.
type serveDuration struct{ time.Duration }

func (d *serveDuration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\" or \"5m\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

const serveEnvHelp = `Configuration comes from, in rising precedence: defaults, a JSON config
file (--config or PHAROX_CONFIG), environment variables, flags.

Environment variables:
  PHAROX_LISTEN            --listen
  PHAROX_STORAGE           --storage
  PHAROX_ADMIN_KEY         --admin-key (comma-separated for several)
  PHAROX_ADMIN_KEY_FILE    --admin-key-file
  PHAROX_CONSUMER_KEYS     --consumer-key (comma-separated)
  PHAROX_SWEEP_INTERVAL    --sweep-interval
  PHAROX_HEALTH_TARGET     --health-target
  PHAROX_LEASE_RETENTION   --lease-retention
  PHAROX_USAGE_RETENTION   --usage-retention
  PHAROX_CONFIG            --config

Config file (JSON, every field optional):
  {"listen": "127.0.0.1:8080", "storage": "sqlite://pharox.db",
   "admin_keys": ["..."], "admin_key_file": "...", "consumer_keys": ["..."],
   "sweep_interval": "5m", "health_target": "https://example.com/",
   "lease_retention": "24h", "usage_retention": "2160h", "reap_interval": "5s", "max_wait": "30s",
   "access_log": true, "log_format": "text", "log_level": "info",
   "metrics_public": false, "metrics_consumer_labels": false,
   "max_consumers_per_key": 1000}

Keys on the command line show in ps: prefer the environment or the config
file. With no admin key configured, serve generates one once, prints it,
and keeps it (mode 0600) in --admin-key-file: by default beside a SQLite
database (pharox.db.admin-key), in the user's config directory
(~/.config/pharox/admin-key) for PostgreSQL and Redis, nowhere for
memory://. Later starts use the kept key and say where it is; to rotate
it, delete the file and restart. The SQLite database file is created with
mode 0600 (it holds proxy passwords).

Keys from flags, environment or the config file are bootstrap keys (admin
keys: admin; consumer keys: consumer, not bound to any consumer). Other
keys live in the store: create, rotate and revoke them with pharox key (or
POST /v1/keys/), as admin, consumer (bound to consumers and pools) or
viewer (read-only, for dashboards). Every serve sharing the store accepts
a new key, and refuses a revoked one, within a few seconds. Admin actions
are recorded in the store's audit log (pharox audit, GET /v1/audit/).

Traffic reported at release (by the gateway, the HTTP transport or any
client) is totalled per hour and consumer, proxy, pool and target (pharox
usage, GET /v1/usage); the totals older than --usage-retention (90 days by
default) are purged once an hour. Quotas (pharox quota, /v1/quotas/) cap a
consumer's or a pool's concurrent leases, acquisitions per minute and bytes
per day or month (429 with Retry-After when over), and a proxy's traffic
allowance.

/healthz, /readyz and /openapi.json need no key. /metrics needs an API key
of any role unless --metrics-public. Metrics are labelled by pool, not by
consumer, unless --metrics-consumer-labels: with it every consumer name
adds its own series, so use it only with few, trusted consumer names. Each
bootstrap consumer key may use at most --max-consumers-per-key distinct
consumer names (default 1000; counted per serve process, admin keys
unlimited; stored consumer keys use only the consumers they are bound to):
an acquisition or consumer past it is refused with 403, and nothing is
created for it.`

func init() {
	var (
		configPath string
		cfg        serveConfig
		flagCfg    struct {
			adminKeys, consumerKeys         []string
			adminKeyFile                    string
			sweep, retention, reap, maxWait time.Duration
			usageRetention                  time.Duration
			accessLog, metricsAuth          bool
			metricsPublic, consumerLabels   bool
			maxConsumersPerKey              int
			listen, storage, target, logFmt string
			logLevel                        string
		}
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the pharox HTTP service",
		Long:  "Run the pharox HTTP service: the JSON API for pools, proxies and leases.\n\n" + serveEnvHelp,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg = serveConfig{
				Listen: "127.0.0.1:8080", Storage: open.DefaultURL,
				LeaseRetention: serveDuration{server.DefaultLeaseRetention}, ReapInterval: serveDuration{server.DefaultReapInterval},
				UsageRetention: serveDuration{server.DefaultUsageRetention},
				MaxWait:        serveDuration{server.DefaultMaxWait}, LogFormat: "text", LogLevel: "info",
			}
			if configPath == "" {
				configPath = os.Getenv("PHAROX_CONFIG")
			}
			if configPath != "" {
				if err := loadServeConfig(configPath, &cfg); err != nil {
					return err
				}
			}
			if err := applyServeEnv(&cfg); err != nil {
				return err
			}
			f := cmd.Flags()
			set := func(name string, apply func()) {
				if f.Changed(name) {
					apply()
				}
			}
			set("listen", func() { cfg.Listen = flagCfg.listen })
			set("storage", func() { cfg.Storage = flagCfg.storage })
			set("admin-key", func() { cfg.AdminKeys = flagCfg.adminKeys })
			set("admin-key-file", func() { cfg.AdminKeyFile = flagCfg.adminKeyFile })
			set("consumer-key", func() { cfg.ConsumerKeys = flagCfg.consumerKeys })
			set("sweep-interval", func() { cfg.SweepInterval.Duration = flagCfg.sweep })
			set("health-target", func() { cfg.HealthTarget = flagCfg.target })
			set("lease-retention", func() { cfg.LeaseRetention.Duration = flagCfg.retention })
			set("usage-retention", func() { cfg.UsageRetention.Duration = flagCfg.usageRetention })
			set("reap-interval", func() { cfg.ReapInterval.Duration = flagCfg.reap })
			set("max-wait", func() { cfg.MaxWait.Duration = flagCfg.maxWait })
			set("access-log", func() { cfg.AccessLog = &flagCfg.accessLog })
			set("metrics-require-key", func() { cfg.MetricsRequireKey = &flagCfg.metricsAuth })
			set("metrics-public", func() { cfg.MetricsPublic = &flagCfg.metricsPublic })
			set("metrics-consumer-labels", func() { cfg.MetricsConsumerLabels = &flagCfg.consumerLabels })
			set("max-consumers-per-key", func() { cfg.MaxConsumersPerKey = &flagCfg.maxConsumersPerKey })
			set("log-format", func() { cfg.LogFormat = flagCfg.logFmt })
			set("log-level", func() { cfg.LogLevel = flagCfg.logLevel })
			return runServe(cmd.Context(), cfg, cmd.OutOrStdout(), cmd.ErrOrStderr(), nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "JSON config file (env PHAROX_CONFIG)")
	f.StringVar(&flagCfg.listen, "listen", "127.0.0.1:8080", "address to listen on (env PHAROX_LISTEN)")
	f.StringVar(&flagCfg.storage, "storage", open.DefaultURL, "storage URL: memory://, sqlite://FILE, postgres://..., redis://..., redis+sentinel://..., mysql://..., mongodb://... (env PHAROX_STORAGE)")
	f.StringSliceVar(&flagCfg.adminKeys, "admin-key", nil, "admin API key, repeatable (env PHAROX_ADMIN_KEY); generated when none is set")
	f.StringVar(&flagCfg.adminKeyFile, "admin-key-file", "", "where the generated admin key is kept when none is set (default: beside a SQLite database; env PHAROX_ADMIN_KEY_FILE)")
	f.StringSliceVar(&flagCfg.consumerKeys, "consumer-key", nil, "consumer API key, repeatable (env PHAROX_CONSUMER_KEYS)")
	f.DurationVar(&flagCfg.sweep, "sweep-interval", 0, "health-sweep every pool this often; 0 disables (env PHAROX_SWEEP_INTERVAL)")
	f.StringVar(&flagCfg.target, "health-target", "", "URL health probes request through each proxy (env PHAROX_HEALTH_TARGET)")
	f.DurationVar(&flagCfg.retention, "lease-retention", server.DefaultLeaseRetention, "purge ended leases older than this; negative keeps them (env PHAROX_LEASE_RETENTION)")
	f.DurationVar(&flagCfg.usageRetention, "usage-retention", server.DefaultUsageRetention, "purge hourly usage totals older than this, once an hour; negative keeps them (env PHAROX_USAGE_RETENTION)")
	f.DurationVar(&flagCfg.reap, "reap-interval", server.DefaultReapInterval, "reclaim expired leases this often")
	f.DurationVar(&flagCfg.maxWait, "max-wait", server.DefaultMaxWait, "longest wait_seconds an acquisition may ask for; a longer one is refused (422)")
	f.BoolVar(&flagCfg.accessLog, "access-log", true, "log one line per request")
	f.BoolVar(&flagCfg.metricsAuth, "metrics-require-key", true, "ignored: /metrics needs a key unless --metrics-public")
	_ = f.MarkDeprecated("metrics-require-key", "/metrics needs an API key by default now; --metrics-public serves it without one")
	f.BoolVar(&flagCfg.metricsPublic, "metrics-public", false, "serve /metrics without an API key (by default it needs a key of any role)")
	f.BoolVar(&flagCfg.consumerLabels, "metrics-consumer-labels", false, "label acquire and release metrics by consumer name (one set of series per consumer: only for few, trusted names)")
	f.IntVar(&flagCfg.maxConsumersPerKey, "max-consumers-per-key", server.DefaultMaxConsumersPerKey, "distinct consumer names one bootstrap consumer key may use in this process; past it, new names get 403 (negative: no limit)")
	f.StringVar(&flagCfg.logFmt, "log-format", "text", "log format: text or json")
	f.StringVar(&flagCfg.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	rootCmd.AddCommand(cmd)
}

func loadServeConfig(path string, cfg *serveConfig) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

func applyServeEnv(cfg *serveConfig) error {
	str := func(name string, dst *string) {
		if v := strings.TrimSpace(os.Getenv(name)); v != "" {
			*dst = v
		}
	}
	list := func(name string, dst *[]string) {
		if v := os.Getenv(name); v != "" {
			*dst = serveSplitList(v)
		}
	}
	dur := func(name string, dst *serveDuration) error {
		if v := strings.TrimSpace(os.Getenv(name)); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			dst.Duration = d
		}
		return nil
	}
	str("PHAROX_LISTEN", &cfg.Listen)
	str("PHAROX_STORAGE", &cfg.Storage)
	str("PHAROX_HEALTH_TARGET", &cfg.HealthTarget)
	str("PHAROX_ADMIN_KEY_FILE", &cfg.AdminKeyFile)
	list("PHAROX_ADMIN_KEY", &cfg.AdminKeys)
	list("PHAROX_CONSUMER_KEYS", &cfg.ConsumerKeys)
	return errors.Join(dur("PHAROX_SWEEP_INTERVAL", &cfg.SweepInterval), dur("PHAROX_LEASE_RETENTION", &cfg.LeaseRetention),
		dur("PHAROX_USAGE_RETENTION", &cfg.UsageRetention))
}

func serveSplitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// serveGenerateKey returns a random API key.
func serveGenerateKey() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return "phx_" + base64.RawURLEncoding.EncodeToString(b)
}

// runServe serves until ctx ends. ready, when not nil, receives the bound
// address (tests listen on port 0).
func runServe(ctx context.Context, cfg serveConfig, stdout, stderr io.Writer, ready func(net.Addr)) error {
	logger, err := newLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		return err
	}
	if err := createSQLiteFile(cfg.Storage); err != nil {
		return err
	}
	store, err := open.Open(ctx, cfg.Storage)
	if err != nil {
		return fmt.Errorf("open storage: %w", err)
	}
	defer store.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	consumerLabels := cfg.MetricsConsumerLabels != nil && *cfg.MetricsConsumerLabels
	rec, err := observe.NewPrometheus(reg, observe.PrometheusOptions{ConsumerLabels: consumerLabels})
	if err != nil {
		return err
	}
	mopts := append(rec.ManagerOptions(), pharox.WithLogger(logger))
	mopts = append(mopts, observe.Logging(logger, 100)...)
	mgr := pharox.NewManager(store, mopts...)

	// keyNote says on startup where the admin key came from.
	keyNote := ""
	if len(cfg.AdminKeys) == 0 {
		path := adminKeyFile(cfg.Storage, cfg.AdminKeyFile)
		if path == "" {
			key := serveGenerateKey()
			cfg.AdminKeys = []string{key}
			keyNote = "no admin key configured; generated one for this run (memory:// keeps nothing): " + key
		} else {
			key, created, err := loadOrCreateAdminKey(path)
			if err != nil {
				return err
			}
			cfg.AdminKeys = []string{key}
			keyNote = fmt.Sprintf("admin key: the one kept in %s (delete the file and restart to rotate)", path)
			if created {
				keyNote = fmt.Sprintf("no admin key configured; generated one and kept it in %s (delete the file to rotate): %s", path, key)
			}
		}
	}
	sweep, err := newSweep(store, cfg.HealthTarget, logger, rec)
	if err != nil {
		return err
	}
	if cfg.SweepInterval.Duration > 0 && cfg.HealthTarget == "" {
		return errors.New("--sweep-interval needs --health-target: the URL probes request through each proxy")
	}
	opts := server.Options{
		AdminKeys:      cfg.AdminKeys,
		ConsumerKeys:   cfg.ConsumerKeys,
		Logger:         logger,
		AccessLog:      cfg.AccessLog == nil || *cfg.AccessLog,
		MaxWait:        cfg.MaxWait.Duration,
		Sweep:          sweep,
		SweepInterval:  cfg.SweepInterval.Duration,
		HealthTarget:   cfg.HealthTarget,
		ReapInterval:   cfg.ReapInterval.Duration,
		LeaseRetention: cfg.LeaseRetention.Duration,
		UsageRetention: cfg.UsageRetention.Duration,
		Registerer:     reg,
		Gatherer:       reg,
		MetricsPublic:  cfg.MetricsPublic != nil && *cfg.MetricsPublic,
	}
	if cfg.MaxConsumersPerKey != nil {
		opts.MaxConsumersPerKey = *cfg.MaxConsumersPerKey
		if opts.MaxConsumersPerKey == 0 {
			return errors.New("max consumers per key (--max-consumers-per-key) is 0, which would refuse every consumer: give a positive limit, or a negative one for no limit")
		}
	}
	if cfg.MetricsRequireKey != nil {
		logger.Warn("pharox serve: metrics_require_key is deprecated and ignored: /metrics needs an API key unless metrics_public is set")
	}
	srv := server.New(mgr, opts)
	return srv.ListenAndServe(ctx, cfg.Listen, func(addr net.Addr) {
		fmt.Fprintf(stdout, "pharox: serving on http://%s (storage %s)\n", addr, open.Redact(cfg.Storage))
		fmt.Fprintf(stdout, "pharox: dashboard at http://%s/ui/ (admin or viewer key)\n", addr)
		if keyNote != "" {
			fmt.Fprintf(stdout, "pharox: %s\n", keyNote)
		}
		logger.Info("pharox serve: listening", "addr", addr.String(), "storage", open.Redact(cfg.Storage),
			"admin_keys", len(cfg.AdminKeys), "consumer_keys", len(cfg.ConsumerKeys),
			"sweep_interval", cfg.SweepInterval.Duration, "lease_retention", cfg.LeaseRetention.Duration,
			"usage_retention", cfg.UsageRetention.Duration)
		if ready != nil {
			ready(addr)
		}
	})
}

// newSweep wires the health package's orchestrator into the server's
// sweep hook. A request may override the probe target; without a
// configured target it must.
func newSweep(store pharox.Storage, target string, logger *slog.Logger, rec *observe.Prometheus) (server.SweepFunc, error) {
	orchFor := func(target string) (*health.Orchestrator, error) {
		checker, err := health.NewChecker(health.CheckerOptions{TargetURL: target})
		if err != nil {
			return nil, err
		}
		return health.NewOrchestrator(store, checker, health.OrchestratorOptions{Logger: logger}), nil
	}
	var byDefault *health.Orchestrator
	if target != "" {
		o, err := orchFor(target)
		if err != nil {
			return nil, fmt.Errorf("--health-target: %w", err)
		}
		byDefault = o
	}
	return func(ctx context.Context, pool, override string) (api.SweepResult, error) {
		o := byDefault
		if override != "" && override != target {
			var err error
			if o, err = orchFor(override); err != nil {
				return api.SweepResult{}, err
			}
		}
		if o == nil {
			return api.SweepResult{}, server.Error(http.StatusUnprocessableEntity,
				"This server has no default health target (pharox serve --health-target): give target_url, the http or https URL each probe requests through the proxies")
		}
		sum, err := o.SweepPool(ctx, pool)
		if errors.Is(err, health.ErrTargetUnreachable) {
			return api.SweepResult{}, server.Error(http.StatusBadGateway, "Probe target unreachable without a proxy; sweep not run")
		}
		if err != nil {
			return api.SweepResult{}, err
		}
		res := api.SweepResult{Pool: pool, Checked: sum.Checked, Skipped: sum.Skipped,
			ByStatus: make(map[string]int, len(sum.ByStatus)), DurationMS: sum.Duration.Milliseconds()}
		for st, n := range sum.ByStatus {
			res.ByStatus[string(st)] = n
		}
		rec.ObserveSweep(pool, res.ByStatus)
		return res, nil
	}, nil
}
