-- 0002_proxy_targets: per (proxy, target) health (pharox.TargetState). A
-- target is a site (its registrable domain); a proxy that a site blocks
-- cools down for that site only and stays usable for every other one.
--
-- An acquisition with a target probes this table by primary key for each
-- proxy its strategy's walk reaches, and passes over the proxy while
-- cooling_until is in the future. Rows go with their proxy (ON DELETE
-- CASCADE); PurgeTargetStates deletes them once idle for the retention,
-- and a cap per proxy bounds them in between. idle_at is
-- pharox.TargetState.IdleSince: the later of the last outcome and the end
-- of the cool-down.
CREATE TABLE IF NOT EXISTS {p}proxy_targets (
    proxy_id         CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    target           VARBINARY(253) NOT NULL,
    failure_streak   INT NOT NULL DEFAULT 0,
    bans             INT NOT NULL DEFAULT 0,
    cooling_until    DATETIME(6) NULL,
    banned_at        DATETIME(6) NULL,
    last_reason      MEDIUMBLOB NULL,
    last_status_code INT NOT NULL DEFAULT 0,
    last_success_at  DATETIME(6) NULL,
    last_failure_at  DATETIME(6) NULL,
    updated_at       DATETIME(6) NOT NULL,
    idle_at          DATETIME(6) AS (GREATEST(updated_at, COALESCE(cooling_until, updated_at))) STORED,
    PRIMARY KEY (proxy_id, target),
    -- The proxies cooling down for one target now (target = T AND
    -- cooling_until > now).
    KEY {p}proxy_targets_cooling (target, cooling_until),
    -- PurgeTargetStates.
    KEY {p}proxy_targets_idle (idle_at),
    CONSTRAINT {p}proxy_targets_proxy_fk FOREIGN KEY (proxy_id) REFERENCES {p}proxies (id) ON DELETE CASCADE
) ENGINE = InnoDB;
