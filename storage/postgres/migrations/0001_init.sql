-- 0001_init: pools, consumers, proxies, leases, sticky sessions and the
-- round-robin cursor. The migration runner sets search_path to the store's
-- schema, so names here are unqualified.

CREATE TABLE pools (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    CONSTRAINT pools_name_key UNIQUE (name)
);

-- One row per pool, created with the pool. RoundRobin acquisitions lock it
-- (FOR NO KEY UPDATE) so the position advances strictly, one lease at a time.
-- No foreign key: its row lock would be shared by every acquisition.
CREATE TABLE pool_cursors (
    pool_id       uuid PRIMARY KEY,
    last_proxy_id uuid
);

CREATE TABLE consumers (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL,
    CONSTRAINT consumers_name_key UNIQUE (name)
);

-- fillfactor leaves room on each page so that the counter updates of the hot
-- path stay HOT (heap-only): current_leases is deliberately in no index.
CREATE TABLE proxies (
    id                uuid             PRIMARY KEY,
    pool_id           uuid             NOT NULL REFERENCES pools (id) ON DELETE CASCADE,
    host              text             NOT NULL,
    port              integer          NOT NULL CHECK (port BETWEEN 1 AND 65535),
    protocol          text             NOT NULL CHECK (protocol IN ('http', 'https', 'socks4', 'socks5')),
    username          text,
    password          text,
    source            text             NOT NULL DEFAULT '',
    country           text             NOT NULL DEFAULT '',
    city              text             NOT NULL DEFAULT '',
    isp               text             NOT NULL DEFAULT '',
    asn               bigint,
    latitude          double precision,
    longitude         double precision,
    tags              text[]           NOT NULL DEFAULT '{}',
    status            text             NOT NULL CHECK (status IN ('active', 'slow', 'inactive', 'banned')),
    status_rank       smallint         GENERATED ALWAYS AS (
                          CASE status WHEN 'active' THEN 0 WHEN 'slow' THEN 1 WHEN 'inactive' THEN 2 ELSE 3 END
                      ) STORED,
    max_concurrency   integer          CHECK (max_concurrency >= 1),
    current_leases    integer          NOT NULL DEFAULT 0,
    checked_at        timestamptz,
    latency_ms        bigint           NOT NULL DEFAULT 0,
    last_error        text             NOT NULL DEFAULT '',
    last_status_code  integer          NOT NULL DEFAULT 0,
    failure_streak    integer          NOT NULL DEFAULT 0,
    status_changed_at timestamptz,
    created_at        timestamptz      NOT NULL,
    -- The last line of defence: even a buggy statement cannot over-lease.
    CONSTRAINT proxies_slots CHECK (
        current_leases >= 0 AND (max_concurrency IS NULL OR current_leases <= max_concurrency)
    )
) WITH (fillfactor = 70);

-- Identity: same pool, protocol, host, port and user (no user = empty user).
CREATE UNIQUE INDEX proxies_identity ON proxies (pool_id, protocol, host, port, (coalesce(username, '')));
-- ListProxies, RoundRobin order, cascades.
CREATE INDEX proxies_pool_id ON proxies (pool_id, id);
-- FirstAvailable walks this index in order and stops at the first free,
-- unlocked row; the other strategies use it to find the pool's leasable rows.
CREATE INDEX proxies_leasable ON proxies (pool_id, status_rank, checked_at DESC NULLS LAST, id)
    WHERE status IN ('active', 'slow');
CREATE INDEX proxies_country ON proxies (pool_id, country, city) WHERE status IN ('active', 'slow');
CREATE INDEX proxies_source ON proxies (pool_id, source) WHERE status IN ('active', 'slow');
CREATE INDEX proxies_location ON proxies (pool_id, latitude, longitude)
    WHERE status IN ('active', 'slow') AND latitude IS NOT NULL;
CREATE INDEX proxies_tags ON proxies USING gin (tags);

-- Leases are written twice each (insert, then the one status change), so the
-- table has few indexes and no foreign keys: the RI trigger would run a
-- query per acquisition. DeleteProxy and DeletePool delete leases
-- themselves, in the transaction that checks there is no active one.
-- Release moves a row out of the two partial "active" indexes, so it only
-- adds entries to the primary key, leases_pool and leases_ended_at.
CREATE TABLE leases (
    id            uuid        PRIMARY KEY,
    proxy_id      uuid        NOT NULL,
    pool_id       uuid        NOT NULL,
    pool_name     text        NOT NULL,
    consumer_id   uuid        NOT NULL,
    consumer_name text        NOT NULL DEFAULT '',
    status        text        NOT NULL CHECK (status IN ('active', 'released', 'expired')),
    acquired_at   timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    released_at   timestamptz,
    session_key   text        NOT NULL DEFAULT '',
    CONSTRAINT leases_ended CHECK ((status = 'active') = (released_at IS NULL))
);

-- Expired leases of one proxy (reclaimed by the acquisition that touches it).
CREATE INDEX leases_active_proxy ON leases (proxy_id, expires_at) WHERE status = 'active';
-- CleanupExpiredLeases.
CREATE INDEX leases_active_expiry ON leases (expires_at) WHERE status = 'active';
-- ListLeases by pool (and by proxy, filtered), DeletePool, DeleteProxy.
CREATE INDEX leases_pool ON leases (pool_id, acquired_at);
-- PurgeEndedLeases.
CREATE INDEX leases_ended_at ON leases (released_at) WHERE status <> 'active';

-- Sticky session bindings. No foreign keys: a key share lock on the pool row
-- taken by every sticky acquisition would turn into multixact churn.
CREATE TABLE sessions (
    pool_id    uuid        NOT NULL,
    key        text        NOT NULL,
    proxy_id   uuid        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (pool_id, key)
);
CREATE INDEX sessions_expiry ON sessions (expires_at);
