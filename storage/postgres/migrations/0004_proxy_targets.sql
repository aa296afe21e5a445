-- 0003_proxy_targets: per (proxy, target) health (pharox.TargetState). A
-- target is a site (its registrable domain); a proxy that a site blocks
-- cools down for that site only and stays usable for every other one.
--
-- An acquisition with a target probes this table by primary key for each
-- proxy its strategy's walk reaches, and passes over the proxy while
-- cooling_until is in the future. Rows go with their proxy (ON DELETE
-- CASCADE); PurgeTargetStates deletes them once idle for the retention,
-- and a cap per proxy bounds them in between.
CREATE TABLE proxy_targets (
    proxy_id         uuid        NOT NULL REFERENCES proxies (id) ON DELETE CASCADE,
    target           text        NOT NULL,
    failure_streak   integer     NOT NULL DEFAULT 0,
    bans             integer     NOT NULL DEFAULT 0,
    cooling_until    timestamptz,
    banned_at        timestamptz,
    last_reason      text        NOT NULL DEFAULT '',
    last_status_code integer     NOT NULL DEFAULT 0,
    last_success_at  timestamptz,
    last_failure_at  timestamptz,
    updated_at       timestamptz NOT NULL,
    -- pharox.TargetState.IdleSince: the later of the last outcome and the
    -- end of the cool-down (greatest ignores NULL).
    idle_at          timestamptz GENERATED ALWAYS AS (greatest(updated_at, cooling_until)) STORED,
    PRIMARY KEY (proxy_id, target)
);

-- The proxies cooling down for one target now (target = T AND
-- cooling_until > now()).
CREATE INDEX proxy_targets_cooling ON proxy_targets (target, cooling_until)
    WHERE cooling_until IS NOT NULL;
-- PurgeTargetStates.
CREATE INDEX proxy_targets_idle ON proxy_targets (idle_at);
