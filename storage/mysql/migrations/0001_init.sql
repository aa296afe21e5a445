-- 0001_init: pools, consumers, proxies, leases, sticky sessions and the
-- round-robin cursor. {p} is the store's table prefix. Every statement is
-- re-runnable (IF NOT EXISTS): MySQL commits DDL statement by statement, so
-- a migration interrupted half-way is simply applied again.
--
-- Ids are canonical lower-case UUID strings in ascii_bin, whose order is the
-- order of uuid.UUID. Names, keys and other compared strings are VARBINARY:
-- compared byte by byte, like Go strings, with no collation folding and no
-- trailing-space padding. Times are UTC DATETIME(6), stamped by the
-- server's UTC_TIMESTAMP(6).

CREATE TABLE IF NOT EXISTS {p}pools (
    id          CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name        VARBINARY(200) NOT NULL,
    description MEDIUMBLOB NOT NULL,
    created_at  DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY {p}pools_name (name)
) ENGINE = InnoDB;

-- One row per pool, created with it. A round-robin acquisition moves it
-- only when no concurrent one holds it (FOR UPDATE SKIP LOCKED).
CREATE TABLE IF NOT EXISTS {p}pool_cursors (
    pool_id       CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    last_proxy_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    PRIMARY KEY (pool_id)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS {p}consumers (
    id         CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name       VARBINARY(200) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY {p}consumers_name (name)
) ENGINE = InnoDB;

-- has_free_slot leads every acquisition index: a full or unleasable proxy
-- drops out of the strategy's index range, so the walk for a free proxy
-- never passes busy ones. rnd is the Random strategy's key, redrawn each
-- time the proxy is leased.
CREATE TABLE IF NOT EXISTS {p}proxies (
    id                CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    pool_id           CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    host              VARBINARY(253) NOT NULL,
    port              INT NOT NULL,
    protocol          VARBINARY(8) NOT NULL,
    has_credentials   TINYINT NOT NULL DEFAULT 0,
    username          VARBINARY(255) NOT NULL DEFAULT '',
    password          MEDIUMBLOB NULL,
    source            VARBINARY(255) NOT NULL DEFAULT '',
    country           VARBINARY(64) NOT NULL DEFAULT '',
    city              VARBINARY(255) NOT NULL DEFAULT '',
    isp               VARBINARY(255) NOT NULL DEFAULT '',
    asn               BIGINT NULL,
    latitude          DOUBLE NULL,
    longitude         DOUBLE NULL,
    -- A JSON array of strings, NULL when there are none.
    tags              MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    status            VARBINARY(8) NOT NULL,
    max_concurrency   INT NULL,
    current_leases    INT NOT NULL DEFAULT 0,
    rnd               BIGINT NOT NULL DEFAULT 0,
    -- When a slot of this proxy was last freed (the latest end of a lease
    -- that gave one back). An acquisition starts its lease no earlier, so
    -- it can read the clock before it locks the row and still never
    -- overlap the lease whose slot it takes.
    freed_at          DATETIME(6) NULL,
    checked_at        DATETIME(6) NULL,
    latency_ms        BIGINT NOT NULL DEFAULT 0,
    last_error        MEDIUMBLOB NULL,
    last_status_code  INT NOT NULL DEFAULT 0,
    failure_streak    INT NOT NULL DEFAULT 0,
    status_changed_at DATETIME(6) NULL,
    created_at        DATETIME(6) NOT NULL,
    status_rank       TINYINT AS (CASE status WHEN 'active' THEN 0 WHEN 'slow' THEN 1 WHEN 'inactive' THEN 2 ELSE 3 END) STORED,
    has_free_slot     TINYINT AS (status IN ('active', 'slow') AND (max_concurrency IS NULL OR current_leases < max_concurrency)) STORED,
    PRIMARY KEY (id),
    UNIQUE KEY {p}proxies_identity (pool_id, protocol, host, port, username),
    KEY {p}proxies_first_available (pool_id, has_free_slot, status_rank, checked_at DESC, id),
    KEY {p}proxies_least_used (pool_id, has_free_slot, status_rank, current_leases, id),
    KEY {p}proxies_round_robin (pool_id, has_free_slot, id),
    KEY {p}proxies_random (pool_id, has_free_slot, rnd),
    KEY {p}proxies_pool (pool_id, id),
    CONSTRAINT {p}proxies_pool_fk FOREIGN KEY (pool_id) REFERENCES {p}pools (id) ON DELETE CASCADE,
    CONSTRAINT {p}proxies_status CHECK (status IN ('active', 'slow', 'inactive', 'banned')),
    -- The last line of defence: even a buggy statement cannot over-lease.
    CONSTRAINT {p}proxies_slots CHECK (current_leases >= 0 AND (max_concurrency IS NULL OR current_leases <= max_concurrency)),
    CONSTRAINT {p}proxies_max CHECK (max_concurrency IS NULL OR max_concurrency >= 1)
) ENGINE = InnoDB;

-- Leases have no foreign keys: each would add a lookup and a shared lock to
-- every acquisition. DeleteProxy and DeletePool delete leases themselves.
-- Every index leads with a column the queries fix, then status, so active
-- leases and ended ones sit in separate ranges.
CREATE TABLE IF NOT EXISTS {p}leases (
    id            CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    proxy_id      CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    pool_id       CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    pool_name     VARBINARY(200) NOT NULL,
    consumer_id   CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    consumer_name VARBINARY(200) NOT NULL DEFAULT '',
    status        VARBINARY(8) NOT NULL,
    acquired_at   DATETIME(6) NOT NULL,
    expires_at    DATETIME(6) NOT NULL,
    released_at   DATETIME(6) NULL,
    session_key   MEDIUMBLOB NULL,
    PRIMARY KEY (id),
    -- Reclaiming a proxy's expired leases; ListLeases by proxy.
    KEY {p}leases_proxy (proxy_id, status, expires_at),
    -- Reclaiming a pool's expired leases; ListLeases by pool; DeletePool.
    KEY {p}leases_pool (pool_id, status, expires_at),
    -- CleanupExpiredLeases (status 'active') and PurgeEndedLeases.
    KEY {p}leases_expiry (status, expires_at),
    KEY {p}leases_ended (status, released_at),
    KEY {p}leases_consumer (consumer_id, acquired_at),
    KEY {p}leases_acquired (acquired_at),
    CONSTRAINT {p}leases_status CHECK (status IN ('active', 'released', 'expired'))
) ENGINE = InnoDB;

-- Sticky session bindings, keyed by the SHA-256 of the session key so keys
-- of any length fit the primary key. proxy_id is NULL only inside the
-- transaction that creates the row to lock the key.
CREATE TABLE IF NOT EXISTS {p}sessions (
    pool_id    CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    key_hash   BINARY(32) NOT NULL,
    proxy_id   CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    expires_at DATETIME(6) NOT NULL,
    PRIMARY KEY (pool_id, key_hash),
    KEY {p}sessions_expiry (expires_at)
) ENGINE = InnoDB;
