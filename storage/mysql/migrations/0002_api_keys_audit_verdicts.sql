-- 0002_api_keys_audit_verdicts: API keys, the audit log of admin actions,
-- and lease verdicts. Re-runnable like 0001: the tables are IF NOT EXISTS,
-- and Migrate takes "duplicate column" from the ALTER as already applied
-- (MySQL has no ADD COLUMN IF NOT EXISTS).
--
-- A key's secret is never stored: digest is its SHA-256, looked up through
-- the unique key and then compared in constant time. consumers and pools
-- are JSON arrays of names, NULL when none.
CREATE TABLE IF NOT EXISTS {p}api_keys (
    id           CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name         VARBINARY(200) NOT NULL,
    role         VARBINARY(16) NOT NULL,
    digest       BINARY(32) NOT NULL,
    hint         VARBINARY(64) NOT NULL DEFAULT '',
    consumers    MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    pools        MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    created_at   DATETIME(6) NOT NULL,
    expires_at   DATETIME(6) NULL,
    revoked_at   DATETIME(6) NULL,
    last_used_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY {p}api_keys_name (name),
    UNIQUE KEY {p}api_keys_digest (digest),
    CONSTRAINT {p}api_keys_role CHECK (role IN ('admin', 'consumer', 'viewer'))
) ENGINE = InnoDB;

-- seq orders entries appended with the same time; id makes a retried
-- append a no-op.
CREATE TABLE IF NOT EXISTS {p}audit_log (
    seq         BIGINT NOT NULL AUTO_INCREMENT,
    id          CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    at          DATETIME(6) NOT NULL,
    actor       VARBINARY(200) NOT NULL,
    action      VARBINARY(200) NOT NULL,
    target_kind VARBINARY(200) NOT NULL DEFAULT '',
    target_id   VARBINARY(200) NOT NULL DEFAULT '',
    detail      BLOB NOT NULL,
    PRIMARY KEY (seq),
    UNIQUE KEY {p}audit_log_id (id),
    KEY {p}audit_log_at (at, seq)
) ENGINE = InnoDB;

-- When the lease's one ban or failure verdict was claimed (NULL: not yet).
-- A nullable column added last is an instant change in MySQL 8 and
-- MariaDB 10.3+: no table copy.
ALTER TABLE {p}leases ADD COLUMN verdict_at DATETIME(6) NULL;
