-- 0004_usage_quotas: usage accounting and quotas (pharox.UsageStore).
-- Re-runnable like 0002: tables are IF NOT EXISTS, and Migrate takes
-- "duplicate column" and "duplicate key name" from the ALTER TABLEs as
-- already applied.
--
-- A lease records the target it was taken for ('' for none) and the usage
-- its holder reported at release (NULL: none reported). Columns added
-- last are instant changes in MySQL 8 and MariaDB 10.3+: no table copy.
ALTER TABLE {p}leases
    ADD COLUMN target VARBINARY(253) NOT NULL DEFAULT '',
    ADD COLUMN usage_requests BIGINT NULL,
    ADD COLUMN usage_bytes_sent BIGINT NULL,
    ADD COLUMN usage_bytes_received BIGINT NULL;

-- A consumer's active, unexpired leases, counted by an acquisition under
-- the consumer's quota (consumer_id = ? AND status = 'active' AND
-- expires_at > now): a range of at most the quota's cap. The pool's count
-- uses leases_pool (pool_id, status, expires_at).
ALTER TABLE {p}leases ADD KEY {p}leases_consumer_active (consumer_id, status, expires_at);

-- When a proxy's traffic allowance (its quota's bytes_per_day or
-- bytes_per_month) is used up, the end of the period: an acquisition's
-- index walk passes over the proxy until then. NULL when the proxy has no
-- quota or is within it. Set with the quota's counters, under the quota's
-- row lock (release with usage, SetQuota, DeleteQuota).
ALTER TABLE {p}proxies ADD COLUMN allowance_until DATETIME(6) NULL;

-- One row per consumer, pool or proxy with a quota. Limits are 0 when
-- unlimited. day/bytes_today and month/bytes_this_month are the byte
-- counters of pharox.Quota (rolled over on read and write, never by a
-- job); tokens/tokens_at are the request bucket (tokens_at NULL: never
-- used, full). An acquisition locks its consumer's and pool's rows FOR
-- UPDATE, in primary key order (consumer < pool < proxy), before any
-- proxy. There is no foreign key: a row names one of three tables.
-- DeletePool and DeleteProxy delete their quotas themselves.
CREATE TABLE IF NOT EXISTS {p}quotas (
    subject               VARBINARY(8) NOT NULL,
    subject_id            CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    max_concurrent_leases INT NOT NULL DEFAULT 0,
    requests_per_minute   INT NOT NULL DEFAULT 0,
    bytes_per_day         BIGINT NOT NULL DEFAULT 0,
    bytes_per_month       BIGINT NOT NULL DEFAULT 0,
    day                   DATETIME(6) NOT NULL,
    bytes_today           BIGINT NOT NULL DEFAULT 0,
    month                 DATETIME(6) NOT NULL,
    bytes_this_month      BIGINT NOT NULL DEFAULT 0,
    tokens                DOUBLE NOT NULL DEFAULT 0,
    tokens_at             DATETIME(6) NULL,
    updated_at            DATETIME(6) NOT NULL,
    PRIMARY KEY (subject, subject_id),
    CONSTRAINT {p}quotas_subject CHECK (subject IN ('consumer', 'pool', 'proxy'))
) ENGINE = InnoDB;

-- Usage in hourly buckets: one row per (hour, consumer, proxy, target),
-- the pool being the proxy's. A release with usage adds to its row with
-- INSERT ... ON DUPLICATE KEY UPDATE. QueryUsage reads a time range
-- (primary key) or a pool's or consumer's range; SetQuota sums a subject's
-- buckets of the current month. Rows outlive their consumer, pool and
-- proxy (history) until PurgeUsage.
CREATE TABLE IF NOT EXISTS {p}usage_hourly (
    hour_start     DATETIME(6) NOT NULL,
    consumer_id    CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    proxy_id       CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    pool_id        CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    target         VARBINARY(253) NOT NULL DEFAULT '',
    leases         BIGINT NOT NULL DEFAULT 0,
    requests       BIGINT NOT NULL DEFAULT 0,
    bytes_sent     BIGINT NOT NULL DEFAULT 0,
    bytes_received BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hour_start, consumer_id, proxy_id, target),
    KEY {p}usage_hourly_consumer (consumer_id, hour_start),
    KEY {p}usage_hourly_pool (pool_id, hour_start),
    KEY {p}usage_hourly_proxy (proxy_id, hour_start)
) ENGINE = InnoDB;
