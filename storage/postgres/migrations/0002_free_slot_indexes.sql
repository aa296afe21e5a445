-- 0002_free_slot_indexes: every strategy walks an index of the proxies that
-- have a free slot, so the cost of an acquisition depends neither on the
-- size of the pool nor on how many of its proxies are busy.
--
-- has_room is kept by PostgreSQL itself from the counter the acquisition
-- and release statements change, so no statement can forget it. The price:
-- a counter update that changes an indexed column is no longer HOT, and
-- writes an entry to each index of the table.
ALTER TABLE proxies
    ADD COLUMN has_room boolean GENERATED ALWAYS AS (max_concurrency IS NULL OR current_leases < max_concurrency) STORED,
    -- Random's position on a circle: the statement starts at a random
    -- point and takes the next free proxy, and redraws the position of the
    -- proxy it took, so that over time every proxy is as likely as any.
    ADD COLUMN rnd double precision NOT NULL DEFAULT random();

-- One partial index per strategy over the leasable proxies with a free
-- slot, in that strategy's order.
CREATE INDEX proxies_free_first ON proxies (pool_id, status_rank, checked_at DESC NULLS LAST, id)
    WHERE status IN ('active', 'slow') AND has_room;
CREATE INDEX proxies_free_least ON proxies (pool_id, status_rank, current_leases, id)
    WHERE status IN ('active', 'slow') AND has_room;
CREATE INDEX proxies_free_id ON proxies (pool_id, id)
    WHERE status IN ('active', 'slow') AND has_room;
CREATE INDEX proxies_free_random ON proxies (pool_id, rnd)
    WHERE status IN ('active', 'slow') AND has_room;
-- Replaced by proxies_free_first.
DROP INDEX proxies_leasable;

-- Expired, unreclaimed leases of one pool, oldest first: when no proxy has
-- a free slot, the acquisition looks here for one to reclaim instead of
-- visiting every full proxy.
CREATE INDEX leases_active_pool ON leases (pool_id, expires_at) WHERE status = 'active';
