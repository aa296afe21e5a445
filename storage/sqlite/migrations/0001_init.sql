-- pharox SQLite schema, version 1.
--
-- Identifiers are canonical lower-case UUID strings: their byte order is the
-- order of uuid.UUID, so ORDER BY id matches the other stores. Timestamps are
-- INTEGER microseconds since the Unix epoch, UTC: exact, sortable and cheap
-- to compare.

CREATE TABLE pools (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
);

CREATE TABLE consumers (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE proxies (
    id                TEXT PRIMARY KEY,
    pool_id           TEXT NOT NULL REFERENCES pools (id) ON DELETE CASCADE,
    host              TEXT NOT NULL,
    port              INTEGER NOT NULL,
    protocol          TEXT NOT NULL,
    -- has_credentials tells "no credentials" from "empty user name".
    has_credentials   INTEGER NOT NULL DEFAULT 0,
    username          TEXT NOT NULL DEFAULT '',
    password          TEXT NOT NULL DEFAULT '',
    source            TEXT NOT NULL DEFAULT '',
    country           TEXT NOT NULL DEFAULT '',
    city              TEXT NOT NULL DEFAULT '',
    isp               TEXT NOT NULL DEFAULT '',
    asn               INTEGER,
    latitude          REAL,
    longitude         REAL,
    -- tags is a JSON array of strings, NULL when there are none.
    tags              TEXT,
    status            TEXT NOT NULL CHECK (status IN ('active', 'slow', 'inactive', 'banned')),
    max_concurrency   INTEGER CHECK (max_concurrency IS NULL OR max_concurrency >= 1),
    current_leases    INTEGER NOT NULL DEFAULT 0,
    checked_at        INTEGER,
    latency_ms        INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT NOT NULL DEFAULT '',
    last_status_code  INTEGER NOT NULL DEFAULT 0,
    failure_streak    INTEGER NOT NULL DEFAULT 0,
    status_changed_at INTEGER,
    created_at        INTEGER NOT NULL,

    -- Derived columns the acquisition indexes are built on.
    status_rank   INTEGER GENERATED ALWAYS AS (
        CASE status WHEN 'active' THEN 0 WHEN 'slow' THEN 1 WHEN 'inactive' THEN 2 ELSE 3 END) VIRTUAL,
    has_free_slot INTEGER GENERATED ALWAYS AS (
        status IN ('active', 'slow') AND (max_concurrency IS NULL OR current_leases < max_concurrency)) VIRTUAL,
    -- checked_key sorts never-checked proxies after every checked one under DESC.
    checked_key   INTEGER GENERATED ALWAYS AS (coalesce(checked_at, -4611686018427387904)) VIRTUAL,

    -- The last line of defence: a bug elsewhere can never over-lease a proxy
    -- or drive its counter negative, the transaction fails instead.
    CHECK (current_leases >= 0),
    CHECK (max_concurrency IS NULL OR current_leases <= max_concurrency)
);

-- Identity of a proxy within its pool; also serves the pool_id foreign key.
CREATE UNIQUE INDEX proxies_identity ON proxies (pool_id, protocol, host, port, username);
-- Acquisition walks one index in the strategy's order and stops at the first
-- candidate Filters.Match accepts. The two ordered indexes are partial: they
-- hold only proxies with a free slot, so busy proxies never slow the walk,
-- and taking a proxy's last slot deletes its entry (one page) rather than
-- moving it (two). Every page a transaction writes costs WAL writes.
CREATE INDEX proxies_first_available ON proxies (pool_id, status_rank, checked_key DESC, id) WHERE has_free_slot = 1;
CREATE INDEX proxies_least_used ON proxies (pool_id, status_rank, current_leases, id) WHERE has_free_slot = 1;
-- Round robin walks ids and skips busy proxies, which sit just behind its
-- cursor, so this index need not change with every lease.
CREATE INDEX proxies_by_id ON proxies (pool_id, id);

-- WITHOUT ROWID: the row lives in the primary-key b-tree, so a new lease
-- writes one table page instead of a row page plus a key-index page. Lease
-- ids are version 7 UUIDs built from AcquiredAt, so the key order is the
-- acquisition order: inserts append, and purging old leases is a key-range
-- walk that needs no index of its own.
CREATE TABLE leases (
    id            TEXT PRIMARY KEY,
    proxy_id      TEXT NOT NULL REFERENCES proxies (id) ON DELETE CASCADE,
    -- No foreign key on pool_id: deleting a pool deletes its proxies, which
    -- cascades to their leases.
    pool_id       TEXT NOT NULL,
    pool_name     TEXT NOT NULL,
    consumer_id   TEXT NOT NULL REFERENCES consumers (id),
    consumer_name TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'released', 'expired')),
    acquired_at   INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    released_at   INTEGER,
    session_key   TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;

-- Active leases by expiry: reclaiming expired leases reads only those, never
-- the ended ones (the index holds active leases only).
CREATE INDEX leases_active_expiry ON leases (expires_at, pool_id) WHERE status = 'active';
-- Serves the proxy_id foreign key (deleting a proxy) and ListLeases by proxy
-- or, through the pool's proxies, by pool.
CREATE INDEX leases_proxy ON leases (proxy_id);

-- A proxy's current_leases is maintained here, by the database, in the
-- statement that starts or ends a lease: the two can never disagree, whoever
-- writes the row, and the proxies CHECKs refuse any lease beyond
-- max_concurrency.
CREATE TRIGGER leases_count_start AFTER INSERT ON leases WHEN NEW.status = 'active'
BEGIN
    UPDATE proxies SET current_leases = current_leases + 1 WHERE id = NEW.proxy_id;
END;

CREATE TRIGGER leases_count_end AFTER UPDATE OF status ON leases
    WHEN OLD.status = 'active' AND NEW.status <> 'active'
BEGIN
    UPDATE proxies SET current_leases = current_leases - 1 WHERE id = NEW.proxy_id;
END;

CREATE TRIGGER leases_count_delete AFTER DELETE ON leases WHEN OLD.status = 'active'
BEGIN
    UPDATE proxies SET current_leases = current_leases - 1 WHERE id = OLD.proxy_id;
END;

-- A lease ends exactly once.
CREATE TRIGGER leases_end_once BEFORE UPDATE OF status ON leases
    WHEN OLD.status <> 'active' AND NEW.status <> OLD.status
BEGIN
    SELECT RAISE(ABORT, 'pharox: an ended lease cannot change status');
END;

CREATE TRIGGER leases_no_move BEFORE UPDATE OF proxy_id ON leases
    WHEN NEW.proxy_id <> OLD.proxy_id
BEGIN
    SELECT RAISE(ABORT, 'pharox: a lease cannot move to another proxy');
END;

-- Sticky session bindings: (pool, key) -> proxy until expires_at.
CREATE TABLE sessions (
    pool_id     TEXT NOT NULL REFERENCES pools (id) ON DELETE CASCADE,
    session_key TEXT NOT NULL,
    proxy_id    TEXT NOT NULL REFERENCES proxies (id) ON DELETE CASCADE,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (pool_id, session_key)
) WITHOUT ROWID;

CREATE INDEX sessions_expiry ON sessions (expires_at);
CREATE INDEX sessions_proxy ON sessions (proxy_id);

-- Round-robin position per pool: the proxy handed out last.
CREATE TABLE round_robin (
    pool_id       TEXT PRIMARY KEY REFERENCES pools (id) ON DELETE CASCADE,
    last_proxy_id TEXT NOT NULL
) WITHOUT ROWID;
