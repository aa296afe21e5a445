-- Per-target health: one row per (proxy, target) a consumer reported an
-- outcome for (see pharox.TargetState). Acquisition with a target skips the
-- proxies whose row for it has cooling_until in the future: a primary-key
-- lookup per candidate the walk meets, so the cost grows with the proxies
-- cooling for the target that come first in the strategy's order, never with
-- the pool. idle_since is max(updated_at, cooling_until), kept by the store:
-- the purge walks its index, and the per-proxy cap evicts the smallest.
CREATE TABLE proxy_targets (
    proxy_id         TEXT NOT NULL REFERENCES proxies (id) ON DELETE CASCADE,
    target           TEXT NOT NULL,
    failure_streak   INTEGER NOT NULL DEFAULT 0,
    bans             INTEGER NOT NULL DEFAULT 0,
    cooling_until    INTEGER,
    banned_at        INTEGER,
    last_reason      TEXT NOT NULL DEFAULT '',
    last_status_code INTEGER NOT NULL DEFAULT 0,
    last_success_at  INTEGER,
    last_failure_at  INTEGER,
    updated_at       INTEGER NOT NULL,
    idle_since       INTEGER NOT NULL,
    PRIMARY KEY (proxy_id, target)
) WITHOUT ROWID;

CREATE INDEX proxy_targets_idle ON proxy_targets (idle_since);
