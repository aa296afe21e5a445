-- 0003_api_keys_audit_verdicts: API keys, the audit log of admin actions,
-- and lease verdicts.
--
-- A key's secret is never stored: digest is its SHA-256, looked up through
-- the unique index and then compared in constant time. consumers and pools
-- are the names a consumer key is bound to (empty arrays when none).
CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL UNIQUE,
    role         text        NOT NULL CHECK (role IN ('admin', 'consumer', 'viewer')),
    digest       bytea       NOT NULL UNIQUE CHECK (octet_length(digest) = 32),
    hint         text        NOT NULL DEFAULT '',
    consumers    text[]      NOT NULL DEFAULT '{}',
    pools        text[]      NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- seq orders entries appended with the same time; id makes a retried
-- append a no-op.
CREATE TABLE audit_log (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid        NOT NULL UNIQUE,
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target_kind text        NOT NULL DEFAULT '',
    target_id   text        NOT NULL DEFAULT '',
    detail      text        NOT NULL DEFAULT ''
);

CREATE INDEX audit_log_at ON audit_log (at, seq);

-- When the lease's one ban or failure verdict was claimed (NULL: not yet).
-- Adding a nullable column without a default rewrites nothing.
ALTER TABLE leases ADD COLUMN verdict_at timestamptz;
