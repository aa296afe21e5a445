-- Usage accounting and quotas (see pharox.UsageStore).

-- A lease records the target it was taken for and, once released with a
-- report, the traffic it carried (NULL: nothing was reported).
ALTER TABLE leases ADD COLUMN target TEXT NOT NULL DEFAULT '';
ALTER TABLE leases ADD COLUMN usage_requests INTEGER;
ALTER TABLE leases ADD COLUMN usage_bytes_sent INTEGER;
ALTER TABLE leases ADD COLUMN usage_bytes_received INTEGER;

-- The active leases of consumers with a concurrency cap, by consumer and
-- expiry: a capped consumer counts its unexpired ones here, reading at most
-- cap entries, whatever the number of its ended leases (a pool counts
-- through leases_active_pool). consumer_capped marks the leases taken while
-- the consumer's quota had max_concurrent_leases, and SetQuota marks the
-- active ones of a consumer whose quota gains one, so every active lease
-- of a capped consumer is in the index, and the leases of other consumers
-- never are: their acquisitions and releases do not write it.
ALTER TABLE leases ADD COLUMN consumer_capped INTEGER NOT NULL DEFAULT 0;

CREATE INDEX leases_capped_consumer ON leases (consumer_id, expires_at) WHERE status = 'active' AND consumer_capped = 1;

-- Released usage, summed per hour (hour_start: microseconds, a multiple of
-- an hour), consumer, proxy and target. pool_id is the proxy's pool, so it
-- is not part of the key. No foreign keys: the buckets are history, and
-- outlive the consumers, pools and proxies they name.
CREATE TABLE usage_hourly (
    hour_start     INTEGER NOT NULL,
    consumer_id    TEXT NOT NULL,
    proxy_id       TEXT NOT NULL,
    pool_id        TEXT NOT NULL,
    target         TEXT NOT NULL DEFAULT '',
    leases         INTEGER NOT NULL DEFAULT 0,
    requests       INTEGER NOT NULL DEFAULT 0,
    bytes_sent     INTEGER NOT NULL DEFAULT 0,
    bytes_received INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour_start, consumer_id, proxy_id, target)
) WITHOUT ROWID;

-- The filters QueryUsage serves and the sums a new quota starts from, each
-- a range of one subject's hours.
CREATE INDEX usage_hourly_consumer ON usage_hourly (consumer_id, hour_start);
CREATE INDEX usage_hourly_pool ON usage_hourly (pool_id, hour_start);
CREATE INDEX usage_hourly_proxy ON usage_hourly (proxy_id, hour_start);

-- One row per consumer, pool or proxy with limits (0: unlimited), with the
-- counters that enforce them: bytes of the UTC day starting at day and of
-- the month starting at month, and the request bucket (tokens left at
-- tokens_at; NULL tokens_at: never used, so full). The primary key orders
-- ListQuotas: 'consumer' < 'pool' < 'proxy', then the id text. subject_id
-- names a row of another table per subject, so it has no foreign key:
-- triggers below delete a pool's and a proxy's quota with it.
CREATE TABLE quotas (
    subject               TEXT NOT NULL CHECK (subject IN ('consumer', 'pool', 'proxy')),
    subject_id            TEXT NOT NULL,
    max_concurrent_leases INTEGER NOT NULL DEFAULT 0,
    requests_per_minute   INTEGER NOT NULL DEFAULT 0,
    bytes_per_day         INTEGER NOT NULL DEFAULT 0,
    bytes_per_month       INTEGER NOT NULL DEFAULT 0,
    day                   INTEGER NOT NULL,
    bytes_today           INTEGER NOT NULL DEFAULT 0,
    month                 INTEGER NOT NULL,
    bytes_this_month      INTEGER NOT NULL DEFAULT 0,
    tokens                REAL NOT NULL DEFAULT 0,
    tokens_at             INTEGER,
    updated_at            INTEGER NOT NULL,
    PRIMARY KEY (subject, subject_id)
) WITHOUT ROWID;

-- A proxy whose traffic allowance is used up is not leased before
-- allowance_until (set at release and by SetQuota from its quota, NULL when
-- it is not used up). The partial index holds only such proxies, so an
-- acquisition learns whether its pool has one live in one probe of an
-- index that is empty while no proxy quota is exhausted.
ALTER TABLE proxies ADD COLUMN allowance_until INTEGER;

CREATE INDEX proxies_allowance ON proxies (pool_id, allowance_until) WHERE allowance_until IS NOT NULL;

CREATE TRIGGER pools_drop_quota AFTER DELETE ON pools
BEGIN
    DELETE FROM quotas WHERE subject = 'pool' AND subject_id = OLD.id;
END;

CREATE TRIGGER proxies_drop_quota AFTER DELETE ON proxies
BEGIN
    DELETE FROM quotas WHERE subject = 'proxy' AND subject_id = OLD.id;
END;
