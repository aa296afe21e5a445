-- API keys, the audit log of admin actions, and lease verdicts.
--
-- A key's secret is never stored: digest is its SHA-256, looked up through
-- the unique index and then compared in constant time. consumers and pools
-- are JSON arrays of names (NULL when none). Times are microseconds since
-- the epoch, UTC, like every other table.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'consumer', 'viewer')),
    digest       BLOB NOT NULL UNIQUE CHECK (length(digest) = 32),
    hint         TEXT NOT NULL DEFAULT '',
    consumers    TEXT,
    pools        TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
);

-- seq (the rowid) orders entries appended with the same time; id makes a
-- retried append a no-op.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_kind TEXT NOT NULL DEFAULT '',
    target_id   TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT ''
);

CREATE INDEX audit_log_at ON audit_log (at, seq);

-- When the lease's one ban or failure verdict was claimed (NULL: not yet).
ALTER TABLE leases ADD COLUMN verdict_at INTEGER;
