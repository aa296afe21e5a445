// Package health probes proxies, classifies them and feeds the results back
// into storage, so that dead or banned proxies stop being leased and come
// back when they recover.
//
// A [Checker] probes one proxy by sending a real HTTP request through it to a
// target URL, speaking the proxy's own protocol: HTTP (absolute-form request
// for http targets, CONNECT for https targets), HTTPS (TLS to the proxy, then
// the same), SOCKS4/4a and SOCKS5 (with username and password). Its [Result]
// carries the observed status, the latency, the HTTP status code and a
// precise [ErrorKind].
//
// An [Orchestrator] sweeps one pool or every pool with bounded concurrency
// and an optional rate limit, and applies each result through
// [pharox.LeaseStore.ApplyHealthCheckResult], which follows
// [pharox.Proxy.ApplyHealthCheck]: a failing status only sticks after a
// failure streak, one healthy probe resets it. Banned proxies rest for a
// cool-down that doubles with every further failed probe, up to a cap (see
// [BanCooldown]). Two guards keep one bad setting from taking a whole pool
// down: before a sweep the orchestrator requests the target directly, and an
// unreachable target aborts the sweep ([ErrTargetUnreachable]); and when more
// than MaxBannedShare of a pool looks banned in one sweep, those bans are
// withheld (stored as failures that leave the status alone, with the reason).
//
// Consumers' own experience feeds back through
// [pharox.Manager.ReportOutcome] in the root package.
package health
