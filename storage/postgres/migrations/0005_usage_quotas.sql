-- 0005_usage_quotas: usage accounting and quotas (pharox.UsageStore).
--
-- A release that reports usage stores it on its lease, adds it to the
-- hourly bucket of (hour, consumer, proxy, target) and to the byte
-- counters of the quotas of the lease's consumer, pool and proxy, in its
-- one statement. Acquisitions enforce consumer and pool quotas; a proxy
-- whose traffic allowance is used up is not a candidate until
-- proxies.allowance_until.

-- The lease's target (AcquireRequest.Target, '' for none) and the usage
-- its holder reported at release (all three NULL when none was).
-- Columns without a volatile default: no table rewrite.
ALTER TABLE leases
    ADD COLUMN target               text   NOT NULL DEFAULT '',
    ADD COLUMN usage_requests       bigint,
    ADD COLUMN usage_bytes_sent     bigint,
    ADD COLUMN usage_bytes_received bigint,
    ADD CONSTRAINT leases_usage CHECK (
        (usage_requests IS NULL) = (usage_bytes_sent IS NULL)
        AND (usage_requests IS NULL) = (usage_bytes_received IS NULL));

-- A consumer's active leases, counted (expires_at > now) by an acquisition
-- for a consumer whose quota sets max_concurrent_leases; a pool's are
-- counted through leases_active_pool (0002). Partial, like the other
-- "active" indexes: a release moves the row out of it.
CREATE INDEX leases_active_consumer ON leases (consumer_id, expires_at) WHERE status = 'active';

-- When the proxy's traffic allowance (its quota's byte limits) resets,
-- while it is used up: every acquisition passes over the proxy until
-- then. Set by the release that crosses a limit and by SetQuota; NULL (or
-- a time past) means leasable. Not in any index: the walks read it from
-- the row they already read.
ALTER TABLE proxies ADD COLUMN allowance_until timestamptz;

-- Usage per hour (hour_start: the UTC hour the leases were released in),
-- consumer, proxy and target; pool_id follows from the proxy. No foreign
-- keys: buckets outlive their proxies and pools (history), and PurgeUsage
-- deletes them by age.
CREATE TABLE usage_hourly (
    hour_start     timestamptz NOT NULL,
    consumer_id    uuid        NOT NULL,
    proxy_id       uuid        NOT NULL,
    pool_id        uuid        NOT NULL,
    target         text        NOT NULL DEFAULT '',
    leases         bigint      NOT NULL DEFAULT 0,
    requests       bigint      NOT NULL DEFAULT 0,
    bytes_sent     bigint      NOT NULL DEFAULT 0,
    bytes_received bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (hour_start, consumer_id, proxy_id, target)
);

-- QueryUsage filtered by consumer or pool, and the counters a new quota
-- starts from (by consumer, pool or proxy), over a range of hours.
CREATE INDEX usage_hourly_consumer ON usage_hourly (consumer_id, hour_start);
CREATE INDEX usage_hourly_pool ON usage_hourly (pool_id, hour_start);
CREATE INDEX usage_hourly_proxy ON usage_hourly (proxy_id, hour_start);

-- One row per consumer, pool or proxy with limits (pharox.Quota); 0 means
-- unlimited. day and month are the periods bytes_today and
-- bytes_this_month count in; tokens and tokens_at the request bucket
-- (tokens_at NULL: never used, full). Acquisitions lock the rows of their
-- consumer and pool FOR UPDATE, which serialises a capped subject's
-- acquisitions across processes. No foreign keys (subject_id names a row
-- of one of three tables): DeletePool and DeleteProxy delete their rows.
CREATE TABLE quotas (
    subject               text             NOT NULL CHECK (subject IN ('consumer', 'pool', 'proxy')),
    subject_id            uuid             NOT NULL,
    max_concurrent_leases integer          NOT NULL DEFAULT 0 CHECK (max_concurrent_leases >= 0),
    requests_per_minute   integer          NOT NULL DEFAULT 0 CHECK (requests_per_minute >= 0),
    bytes_per_day         bigint           NOT NULL DEFAULT 0 CHECK (bytes_per_day >= 0),
    bytes_per_month       bigint           NOT NULL DEFAULT 0 CHECK (bytes_per_month >= 0),
    day                   timestamptz      NOT NULL,
    bytes_today           bigint           NOT NULL DEFAULT 0,
    month                 timestamptz      NOT NULL,
    bytes_this_month      bigint           NOT NULL DEFAULT 0,
    tokens                double precision NOT NULL DEFAULT 0,
    tokens_at             timestamptz,
    updated_at            timestamptz      NOT NULL,
    PRIMARY KEY (subject, subject_id)
);
