package server

import (
	"net/http"
	"strings"
	"time"

	"github.com/pharox/pharox/api"
	"github.com/pharox/pharox/server/ui"
)

// route is one row of the table that both registers the handlers and
// produces the OpenAPI document, so the two cannot drift apart.
type route struct {
	Method string
	// Path is the OpenAPI path, with {name} parameters and the contract's
	// exact trailing slash.
	Path        string
	ID          string
	Tag         string
	Summary     string
	Description string
	Role        Role
	// AdminOnly keeps viewers out of a GET route (keys, the audit log).
	AdminOnly bool
	// Request is a zero value of the body type, nil when there is none.
	Request any
	// BodyOptional accepts an empty body as {}.
	BodyOptional bool
	// Import selects the larger body limit.
	Import bool
	// Long lifts the server's write timeout for this route (to
	// longRouteTimeout), for work that may outlast it, like health sweeps.
	Long bool
	// Status and Response describe success; Response nil means no body.
	Status   int
	Response any
	Query    []queryParam
	// Errors lists the error statuses the route can answer besides the
	// generic ones (400, 401, 403, 413, 422, 500).
	Errors []int

	// api handlers return the success body or an error; raw handlers
	// write their own response.
	api func(s *Server, r *http.Request) (any, error)
	raw func(s *Server, w http.ResponseWriter, r *http.Request)
}

// queryParam documents one query parameter.
type queryParam struct {
	Name, Type, Format, Description string
	// In is where the parameter travels: "query" when empty, or "header".
	In string
}

// pattern returns the ServeMux pattern for the route: a path that ends in
// a slash matches exactly that path ({$}), as in the contract.
func (rt *route) pattern() string {
	p := rt.Path
	if strings.HasSuffix(p, "/") {
		p += "{$}"
	}
	return rt.Method + " " + p
}

func routeTable() []route {
	poolErrs := []int{http.StatusNotFound}
	return []route{
		// Service.
		{Method: "GET", Path: "/healthz", ID: "healthz", Tag: "service", Summary: "Liveness: the process serves requests",
			Role: RolePublic, Status: 200, Response: api.ServiceStatus{}, raw: (*Server).healthz},
		{Method: "GET", Path: "/readyz", ID: "readyz", Tag: "service", Summary: "Readiness: the store answers a ping",
			Role: RolePublic, Status: 200, Response: api.ServiceStatus{}, Errors: []int{503}, raw: (*Server).readyz},
		{Method: "GET", Path: "/metrics", ID: "metrics", Tag: "service", Summary: "Prometheus metrics (text exposition format)",
			Description: "Needs an API key of any role, unless the server serves metrics publicly (pharox serve --metrics-public).",
			Role:        RoleConsumer, Status: 200, raw: (*Server).serveMetrics},
		{Method: "GET", Path: "/openapi.json", ID: "openapi", Tag: "service", Summary: "This OpenAPI document",
			Role: RolePublic, Status: 200, raw: (*Server).serveOpenAPI},

		// Pools.
		{Method: "POST", Path: "/v1/pools/", ID: "createPool", Tag: "pools", Summary: "Create a pool",
			Role: RoleAdmin, Request: api.CreatePoolRequest{}, Status: 201, Response: api.Pool{},
			Errors: []int{409}, api: (*Server).createPool},
		{Method: "GET", Path: "/v1/pools/", ID: "listPools", Tag: "pools", Summary: "List pools ordered by name",
			Role: RoleConsumer, Status: 200, Response: []api.Pool{}, api: (*Server).listPools},
		{Method: "GET", Path: "/v1/pools/{pool_id}", ID: "getPool", Tag: "pools", Summary: "Get a pool",
			Role: RoleConsumer, Status: 200, Response: api.Pool{}, Errors: poolErrs, api: (*Server).getPool},
		{Method: "DELETE", Path: "/v1/pools/{pool_id}", ID: "deletePool", Tag: "pools",
			Summary:     "Delete a pool with its proxies and ended leases",
			Description: "409 while any of its proxies has an active lease.",
			Role:        RoleAdmin, Status: 204, Errors: []int{404, 409}, api: (*Server).deletePool},
		{Method: "GET", Path: "/v1/pools/{pool_id}/stats", ID: "poolStats", Tag: "pools", Summary: "A pool's occupancy",
			Role: RoleConsumer, Status: 200, Response: api.PoolStats{}, Errors: poolErrs, api: (*Server).poolStats},
		{Method: "GET", Path: "/v1/pools/{pool_id}/targets", ID: "poolTargets", Tag: "pools",
			Summary: "A pool's health per site (target)",
			Description: "One entry per site any proxy of the pool has a record for, ordered by site: usable_proxies (leasable and " +
				"not cooling down for it), cooling_proxies, and bans_last_hour (proxies whose last cool-down for it started within the hour). " +
				"501 when the server's store keeps no per-site health.",
			Role: RoleAdmin, Status: 200, Response: []api.TargetStats{},
			Query:  []queryParam{{Name: "limit", Type: "integer", Description: "at most this many sites (default 1000, max 10000)"}},
			Errors: []int{404, 501}, api: (*Server).poolTargets},
		{Method: "POST", Path: "/v1/pools/{pool_id}/health-check", ID: "sweepPool", Tag: "pools",
			Summary:     "Probe every proxy of the pool now and apply the results",
			Description: "501 when the server has no health checker configured.",
			Role:        RoleAdmin, Request: api.SweepRequest{}, BodyOptional: true, Long: true, Status: 200, Response: api.SweepResult{},
			Errors: []int{404, 501}, api: (*Server).sweepPool},

		// Proxies.
		{Method: "POST", Path: "/v1/pools/{pool_id}/proxies/", ID: "createProxy", Tag: "proxies", Summary: "Add a proxy to a pool",
			Role: RoleAdmin, Request: api.CreateProxyRequest{}, Status: 201, Response: api.Proxy{},
			Errors: []int{404, 409}, api: (*Server).createProxy},
		{Method: "GET", Path: "/v1/pools/{pool_id}/proxies/", ID: "listProxies", Tag: "proxies", Summary: "List a pool's proxies ordered by id",
			Role: RoleAdmin, Status: 200, Response: []api.Proxy{}, Query: []queryParam{includeSecrets},
			Errors: poolErrs, api: (*Server).listProxies},
		{Method: "POST", Path: "/v1/pools/{pool_id}/proxies/import", ID: "importProxies", Tag: "proxies",
			Summary:     "Add many proxies, all or none",
			Description: "If any proxy is invalid (422) or a duplicate (409), nothing is stored. Bodies up to the import limit (16 MiB by default).",
			Role:        RoleAdmin, Request: api.ImportProxiesRequest{}, Import: true, Status: 201, Response: api.ImportProxiesResponse{},
			Errors: []int{404, 409}, api: (*Server).importProxies},
		{Method: "GET", Path: "/v1/pools/{pool_id}/proxies/{proxy_id}", ID: "getProxy", Tag: "proxies", Summary: "Get a proxy",
			Role: RoleAdmin, Status: 200, Response: api.Proxy{}, Query: []queryParam{includeSecrets},
			Errors: poolErrs, api: (*Server).getProxy},
		{Method: "GET", Path: "/v1/pools/{pool_id}/proxies/{proxy_id}/targets", ID: "proxyTargets", Tag: "proxies",
			Summary:     "A proxy's health per site (target), ordered by site",
			Description: "501 when the server's store keeps no per-site health.",
			Role:        RoleAdmin, Status: 200, Response: []api.TargetState{},
			Errors: []int{404, 501}, api: (*Server).proxyTargets},
		{Method: "PATCH", Path: "/v1/pools/{pool_id}/proxies/{proxy_id}", ID: "updateProxy", Tag: "proxies",
			Summary: "Set a proxy's status by hand (active, slow, inactive, banned)",
			Role:    RoleAdmin, Request: api.UpdateProxyRequest{}, Status: 200, Response: api.Proxy{},
			Errors: poolErrs, api: (*Server).updateProxy},
		{Method: "DELETE", Path: "/v1/pools/{pool_id}/proxies/{proxy_id}", ID: "deleteProxy", Tag: "proxies",
			Summary: "Delete a proxy", Description: "409 while it has an active lease.",
			Role: RoleAdmin, Status: 204, Errors: []int{404, 409}, api: (*Server).deleteProxy},

		// Consumers.
		{Method: "POST", Path: "/v1/consumers/", ID: "ensureConsumer", Tag: "consumers",
			Summary:     "Get or create the consumer with this name",
			Description: "Idempotent: the same name always gives the same consumer.",
			Role:        RoleConsumer, Request: api.CreateConsumerRequest{}, Status: 201, Response: api.Consumer{},
			api: (*Server).ensureConsumer},
		{Method: "GET", Path: "/v1/consumers/", ID: "listConsumers", Tag: "consumers", Summary: "List consumers ordered by name",
			Role: RoleConsumer, Status: 200, Response: []api.Consumer{}, api: (*Server).listConsumers},

		// Leases.
		{Method: "POST", Path: "/v1/leases/", ID: "acquireLease", Tag: "leases", Summary: "Lease a proxy",
			Description: "Name the pool by pool_id or pool_name and the consumer by consumer_id, consumer_name or neither " +
				"(the default consumer). consumer_id is the id of a known consumer or else a consumer name, created on first use " +
				"like consumer_name (the Python SDK sends names there). 409 {\"detail\": \"No proxy available\"} when nothing fits, after waiting up to " +
				"wait_seconds; a wait longer than the server's maximum is refused (422). The answer carries the proxy with its credentials and URL. " +
				"With target (a host name, host:port, IP address or URL; normalized to its registrable domain) proxies cooling down for that site " +
				"are skipped; a target that is none of these is 422, and 501 when the server's store keeps no per-site health. " +
				"429 when the consumer or the pool is over a quota (see /v1/quotas/): Retry-After says in how many seconds to try again, " +
				"the detail names the quota in a sentence and the quota field for programs. With wait_seconds, a concurrency or " +
				"request-rate refusal is waited out like a busy pool.",
			Role: RoleConsumer, Request: api.AcquireRequest{}, Status: 201, Response: api.Lease{},
			Query: []queryParam{{Name: IdempotencyKeyHeader, In: "header", Type: "string",
				Description: "1 to 255 printable ASCII characters, no spaces: repeating an acquisition with the same key and consumer " +
					"returns the same lease as it is now (active or ended) and never takes a second slot; the same key for another pool is 422. " +
					"The answer repeats the key."}},
			Errors: []int{404, 409, 429, 501}, api: (*Server).acquireCounted},
		{Method: "GET", Path: "/v1/leases/", ID: "listLeases", Tag: "leases", Summary: "List leases, oldest first",
			Description: "A key bound to consumers sees only their leases.",
			Role:        RoleConsumer, Status: 200, Response: []api.Lease{},
			Query: []queryParam{
				{Name: "pool_id", Type: "string", Description: "pool id (or name)"},
				{Name: "proxy_id", Type: "string", Format: "uuid"},
				{Name: "consumer_id", Type: "string", Format: "uuid"},
				{Name: "status", Type: "string", Description: "active, released or expired"},
				{Name: "limit", Type: "integer", Description: "at most this many (default 1000, max 10000)"},
			},
			Errors: poolErrs, api: (*Server).listLeases},
		{Method: "GET", Path: "/v1/leases/{lease_id}", ID: "getLease", Tag: "leases", Summary: "Get a lease",
			Role: RoleConsumer, Status: 200, Response: api.Lease{}, Errors: poolErrs, api: (*Server).getLease},
		{Method: "POST", Path: "/v1/leases/{lease_id}/release", ID: "releaseLease", Tag: "leases",
			Summary: "Release a lease",
			Description: "Idempotent: a lease that already ended (released, or expired) is answered 200 as it ended and nothing is freed. " +
				"A lease past its expiry is expired, not released. 404 for an id the server never had. " +
				"The body is optional: {\"usage\": {\"requests\": n, \"bytes_sent\": n, \"bytes_received\": n}} reports the traffic " +
				"the lease carried; the ended lease keeps it, and it counts in GET /v1/usage and against byte quotas once " +
				"(a repeated release, or one of a lease that already ended, counts nothing). A negative counter is 422.",
			Role: RoleConsumer, Request: api.ReleaseRequest{}, BodyOptional: true, Status: 200, Response: api.Lease{},
			Errors: []int{404}, api: (*Server).release},
		{Method: "POST", Path: "/v1/leases/{lease_id}/renew", ID: "renewLease", Tag: "leases",
			Summary: "Extend an active lease to expire ttl_seconds from now", Description: "409 when the lease already ended.",
			Role: RoleConsumer, Request: api.RenewRequest{}, Status: 200, Response: api.Lease{},
			Errors: []int{404, 409}, api: (*Server).renew},
		{Method: "POST", Path: "/v1/leases/{lease_id}/outcome", ID: "reportOutcome", Tag: "leases",
			Summary: "Report how a request through the leased proxy went",
			Description: "kind is success, failure or banned; the proxy's health follows the server's outcome policy. Answers the updated proxy. " +
				"Only active leases report: 409 when the lease was released or has expired. A lease's first failure or ban counts; " +
				"later ones are answered 200 with the proxy as it is and change nothing. Failures and bans stop changing statuses " +
				"while too large a share of the pool is banned or inactive (a health probe decides then). " +
				"With target, a failure or ban counts against the proxy for that site only (a ban starts a cool-down for it at once, " +
				"failures after the server's threshold), and a proxy cooling down for many sites is banned everywhere.",
			Role: RoleConsumer, Request: api.OutcomeRequest{}, Status: 200, Response: api.Proxy{},
			Errors: []int{404, 409, 501}, api: (*Server).reportOutcome},

		// Usage and quotas.
		{Method: "GET", Path: "/v1/usage", ID: "usage", Tag: "usage",
			Summary: "Traffic reported at release, totalled per consumer, proxy, pool or target",
			Description: "Totals of the usage reported when leases were released, kept in hourly buckets (pharox serve --usage-retention), " +
				"one row per group ordered by key: the consumer, proxy or pool id (with its name) or the target (\"\" for leases taken " +
				"without one). since is rounded down to its hour. A key bound to consumers sees only their usage; viewers and admins see all.",
			Role: RoleConsumer, Status: 200, Response: api.UsageReport{},
			Query: []queryParam{
				{Name: "group_by", Type: "string", Description: "consumer (default), proxy, pool or target"},
				{Name: "since", Type: "string", Description: "from this time (RFC 3339 or Unix seconds); absent means from the first bucket kept"},
				{Name: "until", Type: "string", Description: "before this time (RFC 3339 or Unix seconds); absent means up to now"},
				{Name: "pool", Type: "string", Description: "only this pool's usage (name or id)"},
				{Name: "consumer", Type: "string", Description: "only this consumer's usage (name or id)"},
			},
			Errors: []int{404}, api: (*Server).usage},
		{Method: "GET", Path: "/v1/quotas/", ID: "listQuotas", Tag: "usage", Summary: "List quotas, consumers' then pools' then proxies'",
			Description: "Each quota with its limits (0 is unlimited) and the bytes counted today and this month (UTC). " +
				"A key bound to consumers sees only their quotas.",
			Role: RoleConsumer, Status: 200, Response: []api.Quota{}, api: (*Server).listQuotas},
		{Method: "GET", Path: "/v1/quotas/{subject}/{name_or_id}", ID: "getQuota", Tag: "usage", Summary: "Get the quota of a consumer, pool or proxy",
			Description: "404 when the subject has no quota.",
			Role:        RoleConsumer, Status: 200, Response: api.Quota{}, Errors: []int{404}, api: (*Server).getQuota},
		{Method: "PUT", Path: "/v1/quotas/{subject}/{name_or_id}", ID: "setQuota", Tag: "usage", Summary: "Set the quota of a consumer, pool or proxy",
			Description: "Replaces the limits (0 or absent is unlimited; at least one must be set). max_concurrent_leases caps the subject's " +
				"active leases inside the acquisition, like a proxy's max_concurrency; requests_per_minute is a token bucket refilled " +
				"continuously; bytes_per_day and bytes_per_month count the traffic reported at release in the UTC day and calendar month and " +
				"are checked at acquisition, so they are soft by the traffic of the leases active when the limit is reached. " +
				"A consumer or pool over a quota is refused (429); a proxy takes only byte limits (its traffic allowance) and is not " +
				"leased until the period ends. A new quota's byte counters start from the usage already recorded today and this month; " +
				"a replaced one keeps them. A consumer named for the first time is created.",
			Role: RoleAdmin, Request: api.QuotaLimits{}, Status: 200, Response: api.Quota{}, Errors: []int{404}, api: (*Server).setQuota},
		{Method: "DELETE", Path: "/v1/quotas/{subject}/{name_or_id}", ID: "deleteQuota", Tag: "usage", Summary: "Remove the quota of a consumer, pool or proxy",
			Description: "404 when the subject has no quota.",
			Role:        RoleAdmin, Status: 204, Errors: []int{404}, api: (*Server).deleteQuota},

		// Keys and the audit log.
		{Method: "POST", Path: "/v1/keys/", ID: "createKey", Tag: "keys", Summary: "Create an API key",
			Description: "role is admin, consumer or viewer. A consumer key may be bound to consumer names (the first is its default; " +
				"without any it acts as a consumer named like the key) and to pools by name (empty: every pool). " +
				"expires_in_seconds or expires_at make it expire. The answer carries the secret, once: the server keeps only its digest. " +
				"501 when the store keeps no keys.",
			Role: RoleAdmin, Request: api.CreateKeyRequest{}, Status: 201, Response: api.CreatedKey{},
			Errors: []int{409, 501}, api: (*Server).createKey},
		{Method: "GET", Path: "/v1/keys/", ID: "listKeys", Tag: "keys", Summary: "List API keys ordered by name (never their secrets)",
			Role: RoleAdmin, AdminOnly: true, Status: 200, Response: []api.APIKey{}, Errors: []int{501}, api: (*Server).listKeys},
		{Method: "GET", Path: "/v1/keys/self", ID: "keySelf", Tag: "keys", Summary: "The request's own key: name, role and scopes",
			Description: "Any key may ask, bootstrap keys (from the server's configuration) included.",
			Role:        RoleViewer, Status: 200, Response: api.KeySelf{}, api: (*Server).keySelf},
		{Method: "GET", Path: "/v1/keys/{key_id}", ID: "getKey", Tag: "keys", Summary: "Get an API key by id or name",
			Role: RoleAdmin, AdminOnly: true, Status: 200, Response: api.APIKey{}, Errors: []int{404, 501}, api: (*Server).getKey},
		{Method: "POST", Path: "/v1/keys/{key_id}/rotate", ID: "rotateKey", Tag: "keys",
			Summary:     "Give a key a new secret; the old one stops working",
			Description: "The answer carries the new secret, once. 409 for a revoked key.",
			Role:        RoleAdmin, Request: struct{}{}, BodyOptional: true, Status: 200, Response: api.CreatedKey{},
			Errors: []int{404, 409, 501}, api: (*Server).rotateKey},
		{Method: "DELETE", Path: "/v1/keys/{key_id}", ID: "revokeKey", Tag: "keys",
			Summary:     "Revoke a key",
			Description: "Every server sharing the store refuses it within a few seconds. Revoking again changes nothing. Answers the revoked key.",
			Role:        RoleAdmin, Status: 200, Response: api.APIKey{}, Errors: []int{404, 501}, api: (*Server).revokeKey},
		{Method: "GET", Path: "/v1/audit/", ID: "listAudit", Tag: "keys", Summary: "Admin actions, newest first",
			Description: "Pool, proxy, quota and key changes, status overrides and releases of consumers' leases by admins, with the acting key's name " +
				"(\"bootstrap\" for keys from the server's configuration).",
			Role: RoleAdmin, AdminOnly: true, Status: 200, Response: []api.AuditEntry{},
			Query: []queryParam{
				{Name: "since", Type: "string", Format: "date-time", Description: "entries at or after this time"},
				{Name: "until", Type: "string", Format: "date-time", Description: "entries before this time"},
				{Name: "actor", Type: "string", Description: "key name"},
				{Name: "action", Type: "string", Description: "e.g. pool.create, proxy.status, quota.set, quota.delete, key.revoke, lease.release"},
				{Name: "limit", Type: "integer", Description: "at most this many (default 100, max 1000)"},
			},
			Errors: []int{501}, api: (*Server).listAudit},

		// Dashboard.
		{Method: "GET", Path: "/v1/admin/dashboard", ID: "dashboard", Tag: "admin",
			Summary: "Everything the web dashboard at /ui/ shows, in one answer",
			Description: "Pools with their occupancy, the health sweeps running and the last result of each pool's, and " +
				"a short in-memory history of acquisitions, no-proxy-available answers and proxies per health status, " +
				"sampled by this server process.",
			Role: RoleAdmin, Status: 200, Response: ui.Dashboard{}, api: (*Server).dashboard},
	}
}

// longRouteTimeout bounds how long a Long route may take to answer.
const longRouteTimeout = 15 * time.Minute

var includeSecrets = queryParam{Name: "include_secrets", Type: "boolean",
	Description: "include passwords and credential-bearing URLs"}
