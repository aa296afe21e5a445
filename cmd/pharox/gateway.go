package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/pharox/pharox"
	"github.com/pharox/pharox/client"
	"github.com/pharox/pharox/gateway"
	"github.com/pharox/pharox/storage/open"
)

// gatewayOpenStorage opens the store of direct mode; tests replace it.
var gatewayOpenStorage = open.Open

// gatewayListenHook sees each listener runGateway opens; tests use it to
// learn a port-0 address.
var gatewayListenHook = func(name string, ln net.Listener) {}

// gatewayOptions is everything `pharox gateway` can be told.
type gatewayOptions struct {
	listen, socksListen, metricsListen string
	storage, server, apiKey            string
	defaultPool, user, password        string
	consumer, strategy                 string
	banStatuses                        []int
	banMarkers                         []string
	noTargetHealth, noMetering         bool
	leaseDuration, acquireWait         time.Duration
	dialTimeout, shutdownTimeout       time.Duration
	accessLog, allowOpen, keyAuth      bool
	logFormat, logLevel                string
	idleTimeout, responseHeaderTimeout time.Duration
	maxConns                           int
}

const gatewayHelp = `Run a local rotating forward proxy over the managed pools: point any HTTP
client, browser or scraper at --listen (HTTP proxy, CONNECT included) or
--socks-listen (SOCKS5), and each request or tunnel goes out through a
proxy leased from a pool, released when it ends.

Routing parameters travel in the proxy user name, key-value pairs joined
by '-':

  pool-<name>-country-<cc>-city-<name>-source-<name>-session-<key>-ttl-<seconds>
  poolid-<pool id>-...        (the pool by its id instead of its name)

for example  curl -x http://127.0.0.1:8081 -U 'pool-main-country-us-session-s1:PASS' URL

Every pool name is reachable: inside a value ~XX stands for the byte with
hex value XX, so write '-' as ~2D and '~' as ~7E ("pool-latam~2Dresidential"
is pool "latam-residential"; "pool-z~C3~BCrich" and "pool-zürich" are both
pool "zürich"). '~' passes proxy URLs and curl -U unchanged, so the same
user name works everywhere:
  curl -x 'http://pool-latam~2Dresidential:PASS@127.0.0.1:8081' URL
In a city '_' is a space (~5F an underscore). Keys are case-insensitive;
unknown keys are refused with 407. With --user set, the user name starts
with it ("acme" or "acme-pool-latam-...").

Auth: --password (with or without --user) requires inbound credentials;
--user needs --password. With --key-auth the proxy password is instead an
API key (one kept in the store, see pharox key create, or a bootstrap key):
a consumer key's requests lease as its consumer, from its pools only (403
otherwise); admin keys lease as --consumer; viewer keys cannot lease;
unknown, revoked or expired keys get 407. Over --server the gateway asks
the server who each key is and leases with the user's own key, so the
server applies its scopes; over --storage it checks keys in the store
(and the bootstrap keys of PHAROX_ADMIN_KEY and PHAROX_CONSUMER_KEYS). A
key revoked anywhere stops working here within a few seconds. Without a
password or --key-auth any credentials (or none) are accepted, which the
gateway allows on loopback only unless --allow-open.

Leases come from a store opened directly (--storage, env PHAROX_STORAGE) or
from a pharox server (--server and --api-key, env PHAROX_SERVER and
PHAROX_API_KEY). Before listening the gateway checks that source (it
answers, takes the key, has the --default-pool) and exits with one line
saying what to fix when it cannot work. --metrics-listen serves /metrics
and /readyz (the same check, 200 or 503).

Health is kept per site (target): each request's site is the registrable
domain of its host (shop.example.co.uk counts for example.co.uk). An
upstream a site bans (a --ban-status answer, or with --ban-marker a block
page) cools down for that site only, at once, and keeps serving the
others; an upstream banned by 5 sites within an hour is banned everywhere.
A CONNECT tunnel is opaque: only the upstream's answer to CONNECT counts.
Failures of the upstream itself (unreachable, refusing its credentials)
count everywhere. The ban statuses are 429, and 403 too for a request
whose site is known (many sites answer 403 to an address they block;
counted for that site only, it takes the upstream from no other site);
--ban-status replaces both lists. --no-target-health counts bans
everywhere, as does a lease source that keeps no per-site health; see
pharox targets --pool NAME.

Traffic is metered per lease: each release reports the requests and bytes
the lease carried (a forwarded request's bytes on the connection to the
upstream, a CONNECT or SOCKS5 tunnel's payload each way), which the store
adds to its hourly usage (pharox usage) and to the byte counters of
quotas (pharox quota). --no-metering reports nothing. An acquisition a
quota refuses is answered 429 with Retry-After and the quota named
(SOCKS5: reply 2, connection not allowed by ruleset).

Tunnels idle for --idle-timeout are closed and their lease released; past
--max-conns requests and tunnels at once the gateway answers 503. The
gateway's own answers carry the reason in the X-Pharox-Reason header: 407
(credentials or routing), 429 (over a quota), 503 (no upstream available,
unknown pool, at capacity), 502 (upstream failed or sent no header in
--response-header-timeout).

Environment: PHAROX_GATEWAY_LISTEN, PHAROX_GATEWAY_SOCKS_LISTEN,
PHAROX_GATEWAY_POOL, PHAROX_GATEWAY_USER, PHAROX_GATEWAY_PASSWORD (prefer
these to flags for secrets: flags show in ps), PHAROX_GATEWAY_KEY_AUTH
(true for --key-auth).`

func init() { rootCmd.AddCommand(newGatewayCmd()) }

func newGatewayCmd() *cobra.Command {
	var o gatewayOptions
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run a rotating forward proxy (HTTP and SOCKS5) over the pools",
		Long:  gatewayHelp,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.resolve(cmd); err != nil {
				return err
			}
			return runGateway(cmd.Context(), o, cmd.ErrOrStderr(), nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:8081", "HTTP proxy address (env PHAROX_GATEWAY_LISTEN)")
	f.StringVar(&o.socksListen, "socks-listen", "", "SOCKS5 address, e.g. 127.0.0.1:1080; empty disables (env PHAROX_GATEWAY_SOCKS_LISTEN)")
	f.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus /metrics on this address; empty disables")
	f.StringVar(&o.storage, "storage", "", "storage URL to lease from directly (env PHAROX_STORAGE)")
	f.StringVar(&o.server, "server", "", "pharox server URL to lease from (env PHAROX_SERVER)")
	f.StringVar(&o.apiKey, "api-key", "", "API key for --server; prefer the env var (env PHAROX_API_KEY)")
	f.StringVar(&o.defaultPool, "default-pool", "", "pool used when the user name names none (env PHAROX_GATEWAY_POOL)")
	f.StringVar(&o.user, "user", "", "inbound proxy user; with it or --password, auth is required (env PHAROX_GATEWAY_USER)")
	f.StringVar(&o.password, "password", "", "inbound proxy password; prefer the env var (env PHAROX_GATEWAY_PASSWORD)")
	f.BoolVar(&o.keyAuth, "key-auth", false, "the proxy password is an API key; its scopes apply (env PHAROX_GATEWAY_KEY_AUTH)")
	f.StringVar(&o.consumer, "consumer", gateway.DefaultConsumer, "consumer name leases are taken for")
	f.StringVar(&o.strategy, "strategy", string(pharox.RoundRobin), "proxy choice: round_robin, least_used, random or first_available")
	f.IntSliceVar(&o.banStatuses, "ban-status", nil, "target status that means the upstream is banned, repeatable (default 429, and 403 for a request whose site is known)")
	f.StringArrayVar(&o.banMarkers, "ban-marker", nil, "phrase of a block page (e.g. captcha): an answer of status 400 or above with one in the first 4 KiB of its body is a ban, repeatable")
	f.BoolVar(&o.noTargetHealth, "no-target-health", false, "count bans against an upstream everywhere, not only for the site that banned it")
	f.BoolVar(&o.noMetering, "no-metering", false, "do not report the requests and bytes each lease carried at its release (usage and byte quotas then see none of this gateway's traffic)")
	f.DurationVar(&o.leaseDuration, "lease-duration", gateway.DefaultLeaseDuration, "lease length per request; tunnels renew it while open")
	f.DurationVar(&o.acquireWait, "acquire-wait", 0, "wait this long for a free upstream before answering 503")
	f.DurationVar(&o.dialTimeout, "dial-timeout", gateway.DefaultDialTimeout, "timeout to reach an upstream, handshakes included")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGINT/SIGTERM, let open requests and tunnels finish this long")
	f.DurationVar(&o.idleTimeout, "idle-timeout", gateway.DefaultIdleTimeout, "close a tunnel after this long without traffic either way, releasing its lease; 0 never")
	f.IntVar(&o.maxConns, "max-conns", gateway.DefaultMaxConns, "serve at most this many requests and tunnels at once, answering 503 past it; 0 no cap")
	f.DurationVar(&o.responseHeaderTimeout, "response-header-timeout", gateway.DefaultResponseHeaderTimeout, "answer 502 when an upstream sends no response header this long after a request; 0 no limit")
	f.BoolVar(&o.allowOpen, "allow-open", false, "listen beyond loopback without --password (anyone who reaches the port uses your proxies)")
	f.BoolVar(&o.accessLog, "access-log", true, "log one line per request or tunnel (never credentials)")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

// resolve applies the environment where flags were not given and checks
// the lease source.
func (o *gatewayOptions) resolve(cmd *cobra.Command) error {
	env := func(flag, name string, dst *string) {
		if !cmd.Flags().Changed(flag) {
			if v := strings.TrimSpace(os.Getenv(name)); v != "" {
				*dst = v
			}
		}
	}
	env("listen", "PHAROX_GATEWAY_LISTEN", &o.listen)
	env("socks-listen", "PHAROX_GATEWAY_SOCKS_LISTEN", &o.socksListen)
	env("default-pool", "PHAROX_GATEWAY_POOL", &o.defaultPool)
	env("user", "PHAROX_GATEWAY_USER", &o.user)
	env("password", "PHAROX_GATEWAY_PASSWORD", &o.password)
	env("api-key", "PHAROX_API_KEY", &o.apiKey)
	if !cmd.Flags().Changed("key-auth") {
		if v := strings.TrimSpace(os.Getenv("PHAROX_GATEWAY_KEY_AUTH")); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("PHAROX_GATEWAY_KEY_AUTH must be true or false, got %q", v)
			}
			o.keyAuth = b
		}
	}
	if o.keyAuth && o.password != "" {
		return errors.New("--key-auth and --password are mutually exclusive: with --key-auth the proxy password is an API key")
	}
	switch cs, cst := cmd.Flags().Changed("server"), cmd.Flags().Changed("storage"); {
	case cs && cst:
		return errors.New("--server and --storage are mutually exclusive: lease from a server or from a store, not both")
	case !cs && !cst:
		o.server, o.storage = strings.TrimSpace(os.Getenv("PHAROX_SERVER")), strings.TrimSpace(os.Getenv("PHAROX_STORAGE"))
		if o.server != "" && o.storage != "" {
			return errors.New("both PHAROX_SERVER and PHAROX_STORAGE are set: unset one or pass --server or --storage")
		}
	}
	if o.server == "" && o.storage == "" {
		return errors.New("no lease source: pass --storage URL (or set PHAROX_STORAGE) or --server URL (or set PHAROX_SERVER)")
	}
	if o.listen == "" && o.socksListen == "" {
		return errors.New("nothing to listen on: give --listen or --socks-listen")
	}
	if o.user != "" && o.password == "" {
		return errors.New("--user needs --password (or PHAROX_GATEWAY_PASSWORD): without one any password would pass")
	}
	if o.password == "" && !o.keyAuth && !o.allowOpen {
		for _, addr := range []string{o.listen, o.socksListen} {
			if addr != "" && !loopbackAddr(addr) {
				return fmt.Errorf("--listen/--socks-listen %s reaches beyond this machine without auth: set --password (or PHAROX_GATEWAY_PASSWORD), or pass --allow-open to serve anyone who reaches it", addr)
			}
		}
	}
	return nil
}

// loopbackAddr reports whether a listen address accepts connections from
// this machine only: a loopback IP or "localhost". An empty host listens
// on every interface.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// gatewayCheckTimeout bounds the start-up check and each /readyz probe.
const gatewayCheckTimeout = 10 * time.Second

// explainCheck turns a failed check into one sentence saying what to fix.
func explainCheck(err error, o gatewayOptions, source string) string {
	switch {
	case errors.Is(err, gateway.ErrDefaultPoolMissing):
		return fmt.Sprintf("default pool %q does not exist in %s: create it or pass another --default-pool", o.defaultPool, source)
	case errors.Is(err, client.ErrUnauthorized):
		return fmt.Sprintf("%s refused the API key: set --api-key or PHAROX_API_KEY to a key it accepts", source)
	case errors.Is(err, client.ErrForbidden):
		return fmt.Sprintf("%s does not let this API key look up pools: use a consumer or admin key", source)
	}
	return fmt.Sprintf("%s does not answer: %v", source, err)
}

// runGateway serves until ctx ends. ready, when not nil, receives the bound
// HTTP and SOCKS5 addresses (nil when disabled); tests listen on port 0.
func runGateway(ctx context.Context, o gatewayOptions, stderr io.Writer, ready func(httpAddr, socksAddr net.Addr)) error {
	logger, err := newLogger(stderr, o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	var (
		leaser    gateway.Leaser
		keys      gateway.KeyChecker
		storeKeys *gateway.StoreKeys
	)
	source := ""
	if o.server != "" {
		opts := []client.Option{client.WithUserAgent("pharox-gateway")}
		if o.apiKey != "" {
			opts = append(opts, client.WithAPIKey(o.apiKey))
		}
		c, err := newServerClient(o.server, opts...)
		if err != nil {
			return err
		}
		leaser, source = gateway.NewRemoteLeaser(c), "server "+o.server
		if o.keyAuth {
			keys = gateway.NewServerKeys(c)
		}
	} else {
		if err := requireSQLiteFile(o.storage); err != nil {
			return err
		}
		store, err := gatewayOpenStorage(ctx, o.storage)
		if err != nil {
			return fmt.Errorf("open storage: %w", err)
		}
		defer store.Close()
		if scheme, _, _ := strings.Cut(strings.ToLower(o.storage), "://"); scheme == "memory" || scheme == "mem" {
			logger.Warn("pharox gateway: a memory:// store starts empty and lives only in this process; use a shared store or --server")
		}
		leaser, source = gateway.NewLocalLeaser(pharox.NewManager(store, pharox.WithLogger(logger))), "storage "+open.Redact(o.storage)
		if o.keyAuth {
			if _, ok := store.(pharox.KeyStore); !ok {
				logger.Warn("pharox gateway: this store keeps no API keys yet: only the bootstrap keys (PHAROX_ADMIN_KEY, PHAROX_CONSUMER_KEYS) pass --key-auth")
			}
			storeKeys = gateway.NewStoreKeys(store, serveSplitList(os.Getenv("PHAROX_ADMIN_KEY")), serveSplitList(os.Getenv("PHAROX_CONSUMER_KEYS")))
			keys = storeKeys
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gw, err := gateway.New(gateway.Config{
		Leaser: leaser, Keys: keys, DefaultPool: o.defaultPool, User: o.user, Password: o.password,
		Consumer: o.consumer, Strategy: pharox.Strategy(o.strategy), LeaseDuration: o.leaseDuration,
		AcquireWait: o.acquireWait, BanStatuses: o.banStatuses, DialTimeout: o.dialTimeout,
		BanMarkers: o.banMarkers, DisableTargetHealth: o.noTargetHealth, DisableMetering: o.noMetering,
		IdleTimeout: disabledIfZero(o.idleTimeout), MaxConns: int(disabledIfZero(time.Duration(o.maxConns))),
		ResponseHeaderTimeout: disabledIfZero(o.responseHeaderTimeout),
		Registerer:            reg, Logger: logger, DisableAccessLog: !o.accessLog,
	})
	if err != nil {
		return err
	}
	cctx, cancelCheck := context.WithTimeout(ctx, gatewayCheckTimeout)
	err = gw.Check(cctx)
	cancelCheck()
	if err != nil {
		gw.Close()
		// Keep the cause: a source that is down for now exits 75 like
		// every other command, one that is misconfigured 1.
		return wrapMessage("gateway cannot start: "+explainCheck(err, o, source), err)
	}

	var (
		lns             []net.Listener
		httpLn, socksLn net.Listener
		metricsSrv      *http.Server
	)
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	listen := func(addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		lns = append(lns, ln)
		return ln, nil
	}
	if o.listen != "" {
		if httpLn, err = listen(o.listen); err != nil {
			return err
		}
	}
	if o.socksListen != "" {
		if socksLn, err = listen(o.socksListen); err != nil {
			return err
		}
	}
	var metricsLn net.Listener
	if o.metricsListen != "" {
		if metricsLn, err = listen(o.metricsListen); err != nil {
			return err
		}
		gatewayListenHook("metrics", metricsLn)
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), gatewayCheckTimeout)
			defer cancel()
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if err := gw.Check(ctx); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, explainCheck(err, o, source))
				return
			}
			_, _ = io.WriteString(w, "ready\n")
		})
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}

	errc := make(chan error, 3)
	var wg sync.WaitGroup
	keysCtx, stopKeys := context.WithCancel(context.WithoutCancel(ctx))
	defer stopKeys()
	if storeKeys != nil {
		wg.Go(func() {
			storeKeys.Run(keysCtx, func(err error) { logger.Warn("pharox gateway: record when API keys were last used", "err", err) })
		})
	}
	attrs := []any{"source", source, "default_pool", o.defaultPool, "auth", o.user != "" || o.password != "" || o.keyAuth, "key_auth", o.keyAuth}
	if httpLn != nil {
		attrs = append(attrs, "http", httpLn.Addr().String())
		wg.Go(func() { errc <- gw.Serve(httpLn) })
	}
	if socksLn != nil {
		attrs = append(attrs, "socks5", socksLn.Addr().String())
		wg.Go(func() { errc <- gw.ServeSOCKS(socksLn) })
	}
	if metricsSrv != nil {
		attrs = append(attrs, "metrics", metricsLn.Addr().String())
		wg.Go(func() {
			if err := metricsSrv.Serve(metricsLn); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		})
	}
	logger.Info("pharox gateway listening", attrs...)
	if o.password == "" && !o.keyAuth && (!loopbackAddr(o.listen) && o.listen != "" || !loopbackAddr(o.socksListen) && o.socksListen != "") {
		logger.Warn("pharox gateway: open to anyone who reaches it (no --password, --allow-open): it spends your proxies for them")
	}
	if ready != nil {
		var h, s net.Addr
		if httpLn != nil {
			h = httpLn.Addr()
		}
		if socksLn != nil {
			s = socksLn.Addr()
		}
		ready(h, s)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	logger.Info("pharox gateway shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.shutdownTimeout)
	defer cancel()
	if err := gw.Shutdown(sctx); err != nil {
		logger.Warn("pharox gateway: open requests cut at shutdown", "err", err)
	}
	if metricsSrv != nil {
		if err := metricsSrv.Shutdown(sctx); err != nil {
			logger.Warn("pharox gateway: metrics server shutdown", "err", err)
		}
	}
	closeAll()
	stopKeys()
	wg.Wait()
	return runErr
}

// disabledIfZero maps the CLI's "0 turns it off" to the library's
// negative value (where zero means the default).
func disabledIfZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
