// Package gateway is a local rotating forward proxy over pharox pools: any
// HTTP client, browser or scraper uses the managed proxies by pointing its
// proxy setting at one address, without an SDK.
//
// Inbound it speaks HTTP (absolute-form requests and CONNECT tunnels) and
// SOCKS5 (CONNECT). For each request or tunnel it leases an upstream proxy
// from a pool through a [Leaser] (a [pharox.Manager] in this process, or a
// remote `pharox serve` through the Go client), relays through it (HTTP,
// HTTPS, SOCKS5 and SOCKS4 upstreams, with their credentials) and releases
// the lease when the request or tunnel ends, also when the client goes away
// or the upstream fails. Leases, max_concurrency, health and sticky
// sessions therefore apply to the gateway's traffic as to any consumer's.
//
// # Routing
//
// Routing parameters travel in the proxy-auth user name, the convention of
// commercial gateways (see [ParseRoute]):
//
//	pool-latam-country-ar-city-buenos_aires-source-list1-session-abc123-ttl-600
//
// pool picks the pool by name and poolid by id (Config.DefaultPool when
// neither is given), country, city and source filter its proxies, session
// makes the choice sticky for ttl seconds. Any pool name is addressable:
// inside a value ~XX stands for the byte XX, so a '-' is written ~2D
// ("pool-latam~2Dresidential") and a '~' ~7E; [FormatRoute] writes a
// user name for any route. Unknown keys are refused with 407 and a reason
// rather than ignored. The password is the gateway's own
// (Config.Password), or with Config.Keys an API key ([NewStoreKeys] over a
// store, [NewServerKeys] through a server): then a consumer key's requests
// lease as its consumer and only from its pools (403 otherwise), a viewer
// key cannot lease, and an unknown, revoked or expired key gets 407. Over
// a server the gateway leases with the user's own key, so the server
// applies its scopes too. Without either any password is accepted.
//
// # Failures
//
// Upstream connect errors, 407 answers to the upstream's credentials and
// ban statuses (Config.BanStatuses, default 429) are reported through
// [Leaser.ReportOutcome] (as failure, failure with reason "upstream proxy
// auth required", and banned), and the request is retried once on another
// upstream when that is safe: a tunnel not yet open, a request not yet
// sent, or an idempotent request whose body was not read. The retry
// excludes the failed proxy with a filter predicate, so a sticky session
// moves to the new upstream; over stores or services that cannot run Go
// predicates it holds the failed lease while it takes another and the
// session binding moves only once health makes the dead proxy inactive.
// When the upstream could not reach the target (CONNECT answered 502/503/
// 504, SOCKS host unreachable) nothing is reported: that is not the
// proxy's fault.
//
// The gateway's own answers carry [ReasonHeader]: 407 for credentials and
// routing, 429 over a quota, 503 when no upstream is available (or the
// pool does not exist), 502 when upstreams failed.
//
// # Per-site health
//
// Each request's site is the registrable domain of its host (the
// absolute URL's, or the CONNECT or SOCKS5 target's; see
// [pharox.NormalizeTarget]). Acquisitions name it, so upstreams cooling
// down for the site are not leased for it, and bans are reported with it,
// so they count against the upstream for that site only: a ban status
// (by default 429, and 403 for a request whose site is known), or with
// Config.BanMarkers a block page in an error answer (plain HTTP only; a
// tunnel is opaque and only the upstream's answer to CONNECT counts).
// Failures of the upstream itself count everywhere, as without a site.
// Config.DisableTargetHealth turns this off, and a lease source that keeps
// no per-site health (pharox.ErrUnsupported) turns it off by itself.
//
// # Metering and quotas
//
// Each lease's release reports the traffic it carried ([pharox.Usage],
// through [Leaser.Release]), which the lease source adds to its hourly
// usage aggregates and to the byte counters of quotas. A forwarded request
// counts the bytes on its connection to the upstream proxy: its request
// line, headers and body out, the answer in, and the handshakes of a
// connection dialed for it (a SOCKS greeting, a CONNECT for an https://
// URL, TLS). The handshakes of a connection dialed for a request that
// ended before the dial did count for the next request that uses the
// connection, and not at all if none does.
// A CONNECT or SOCKS5 tunnel counts its payload each way once open. Each
// forwarded request and each tunnel is one request; a lease that carried
// none (a tunnel attempt that failed) reports zero. Counting is a few
// atomic additions per read and write, and the report rides on the
// release: no extra call to the lease source. Config.DisableMetering
// reports nothing.
//
// An acquisition refused by a quota ([pharox.ErrQuotaExceeded]) is
// answered 429 with Retry-After (the refusal's RetryAfter, in whole
// seconds, at least 1) and a one-line reason naming the quota, e.g.
// `consumer "scraper-1" is over its quota max_concurrent_leases=5; retry
// in 1s`; with Config.AcquireWait a local lease source waits out a full
// concurrency cap or request bucket first. SOCKS5 has no such answer: the
// client gets reply 2, "connection not allowed by ruleset", as when the
// gateway is at Config.MaxConns, and the access log has the reason.
//
// # Limits and readiness
//
// A tunnel through which nothing went either way for Config.IdleTimeout
// (default 5m) is closed and its lease released; past Config.MaxConns
// requests and tunnels at once (default 4096) the gateway answers 503; an
// upstream that sends no response header within
// Config.ResponseHeaderTimeout (default 60s) gets the request a 502. A
// request the gateway gives up because its client went away is answered
// by closing the connection, never with an empty 200. [Gateway.Check]
// tells whether the lease source answers, accepts the credentials and has
// the default pool: `pharox gateway` runs it before listening and serves
// it as /readyz.
//
// # Efficiency
//
// Plain HTTP requests reuse keep-alive connections to each upstream (one
// http.Transport per upstream, at most Config.MaxTransports, least
// recently used closed first). Tunnels copy through pooled 32 KiB buffers
// (or kernel splicing between TCP sockets) with two goroutines each, and
// every goroutine ends with its connection.
package gateway
