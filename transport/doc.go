// Package transport is an http.RoundTripper that leases a proxy from a
// pharox pool for each request, sends the request through it, tells the
// pool how it went and gives the proxy back when the response body ends.
// A Go scraper gets rotation, stickiness, health feedback and retries by
// setting one field:
//
//	mgr := pharox.NewManager(store) // or transport.Remote(client.New(...))
//	rt, err := transport.New(transport.Local(mgr), "residential",
//		transport.WithFilters(&pharox.Filters{Country: "AR"}))
//	hc := &http.Client{Transport: rt, Timeout: 30 * time.Second}
//	resp, err := hc.Get("https://example.com/")
//	...
//	resp.Body.Close() // gives the proxy back
//
// # Leases
//
// Each request takes its own lease from the pool (through a [Leaser]: a
// [pharox.Manager] in this process with [Local], or a pharox service with
// [Remote]); the lease lives until the response body is read to its end
// or closed, or the request fails, not until RoundTrip returns. While a
// body is being read the lease is renewed, so a long download or a stream
// keeps its proxy; a body that is never read nor closed lets its lease
// expire after the lease duration (the pool reclaims it). A body known to
// be empty (HEAD, 204, Content-Length 0) releases at once.
//
// Pool, consumer, filters, strategy, lease and session durations come from
// [Option]s and can be changed per request through the request's context
// with [WithRequestOptions]; [WithSession] makes requests sticky, failing
// over and re-binding when the session's proxy cannot serve.
//
// When every matching proxy is busy a request waits for a free one up to
// [WithMaxWait] and never past its context's deadline, then fails with an
// error wrapping [pharox.ErrNoProxyAvailable] (test it with errors.Is). A
// consumer or pool at its quota's concurrency cap or out of its request
// rate is waited out the same way; a refusal that outlasts the wait, or
// one for bytes per day or month, fails with an error wrapping a
// [*pharox.QuotaError] ([pharox.ErrQuotaExceeded]), saying which limit
// and when to retry.
//
// # Upstreams
//
// HTTP and HTTPS proxies forward http:// requests and tunnel https:// ones
// with CONNECT (net/http's own proxy support); SOCKS5 proxies go through
// golang.org/x/net/proxy and SOCKS4 through a small client of this
// module. Credentials come from the proxy's record. TLS to the target is
// http.Transport's: each proxy gets its own http.Transport cloned from a
// base ([WithBaseTransport]), kept in a bounded cache so that requests
// through the same proxy reuse its keep-alive connections. A proxy's
// transport is dropped and its connections closed when the proxy is
// banned, turns inactive, is deleted or changes address or credentials,
// and when the cache is over its cap.
//
// # Outcomes and retries
//
// A [Classifier] turns each response into a [pharox.Outcome]; the default
// ([DefaultClassifier]) bans on 429 and on 403/503 block pages and fails
// on 407, and the Transport itself fails connection errors. Failures and
// bans go to the pool's ReportOutcome at once, so its health learns from
// real traffic, and the request is retried on another proxy when that is
// safe (see [Transport]). A failure of the target itself (the proxy
// answered that it could not reach it) is not held against the proxy.
//
// # Per-site health
//
// Each request names its site (the registrable domain of the URL's host,
// see [pharox.NormalizeTarget], or RequestOptions.Target) when it leases,
// so proxies cooling down for that site are not leased for it, and its
// successes and bans are reported with the site, so a ban counts against
// the proxy for that site only and the proxy keeps serving the others. An
// error answer of a site is reported even when successes are spaced out:
// the pool's per-site policy counts a plain 403 as a ban for the site by
// default. Failures count against the proxy everywhere. [WithoutTargetHealth]
// turns this off; a lease source that keeps no per-site health turns it
// off by itself.
//
// # Metering
//
// Each lease's release reports the traffic it carried ([pharox.Usage]):
// one request, and its bytes on the connection through the proxy
// (request line, headers and body out, the answer in, and the handshakes
// of a connection dialed for it: SOCKS, CONNECT, TLS), counted by a thin
// wrapper on the connection, which HTTP/1 gives one request at a time.
// The handshakes of a connection dialed for a request that ended before
// the dial did count for the next request that uses the connection, and
// not at all if none does.
// Over HTTP/2 (an https:// site that negotiates it through the proxy's
// tunnel) concurrent requests share a connection, so each counts its
// request and response bodies only. A failed attempt that got no
// connection reports zero; a lease that expires (a body never read nor
// closed) reports nothing. The lease source adds the report to its usage
// aggregates and quota counters as part of the release, with no call of
// its own; [WithoutMetering] reports nothing.
//
// # Metrics
//
// [WithObserver] receives requests, outcomes and lease waits;
// observe.TransportMetrics records them in Prometheus.
package transport
