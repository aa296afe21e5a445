-- Every strategy finds its candidate in O(log n), however many proxies the
-- pool has and however many of them are busy.

-- Round robin walked every proxy in id order, skipping busy ones; now it
-- walks only those with a free slot.
CREATE INDEX proxies_round_robin ON proxies (pool_id, id) WHERE has_free_slot = 1;

-- Random counted the candidates and read one at a random OFFSET, walking
-- them all. Now the proxies of a pool with a free slot are numbered densely
-- 0..n-1 (random_slots, with n in random_counts), so a uniform choice is a
-- random number and one key lookup. Triggers keep the numbering in the
-- statement that changes a proxy's has_free_slot: a proxy that leaves takes
-- the last one's number (swap-remove), one that enters gets number n.
CREATE TABLE random_counts (
    pool_id TEXT PRIMARY KEY REFERENCES pools (id) ON DELETE CASCADE,
    n       INTEGER NOT NULL CHECK (n >= 0)
) WITHOUT ROWID;

CREATE TABLE random_slots (
    pool_id  TEXT NOT NULL,
    pos      INTEGER NOT NULL,
    proxy_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (pool_id, pos)
) WITHOUT ROWID;

INSERT INTO random_counts (pool_id, n) SELECT id, 0 FROM pools;
INSERT INTO random_slots (pool_id, pos, proxy_id)
    SELECT pool_id, row_number() OVER (PARTITION BY pool_id ORDER BY id) - 1, id
    FROM proxies WHERE has_free_slot = 1;
UPDATE random_counts SET n = (SELECT count(*) FROM random_slots s WHERE s.pool_id = random_counts.pool_id);

CREATE TRIGGER pools_random_count AFTER INSERT ON pools
BEGIN
    INSERT INTO random_counts (pool_id, n) VALUES (NEW.id, 0);
END;

CREATE TRIGGER proxies_random_insert AFTER INSERT ON proxies WHEN NEW.has_free_slot = 1
BEGIN
    INSERT INTO random_slots (pool_id, pos, proxy_id)
        VALUES (NEW.pool_id, (SELECT n FROM random_counts WHERE pool_id = NEW.pool_id), NEW.id);
    UPDATE random_counts SET n = n + 1 WHERE pool_id = NEW.pool_id;
END;

CREATE TRIGGER proxies_random_enter AFTER UPDATE ON proxies
    WHEN OLD.has_free_slot = 0 AND NEW.has_free_slot = 1
BEGIN
    INSERT INTO random_slots (pool_id, pos, proxy_id)
        VALUES (NEW.pool_id, (SELECT n FROM random_counts WHERE pool_id = NEW.pool_id), NEW.id);
    UPDATE random_counts SET n = n + 1 WHERE pool_id = NEW.pool_id;
END;

-- The leaving row parks at -1 - pos (keeping its number), the last row
-- takes that number, and the leaving row goes.
CREATE TRIGGER proxies_random_leave AFTER UPDATE ON proxies
    WHEN OLD.has_free_slot = 1 AND NEW.has_free_slot = 0
BEGIN
    UPDATE random_slots SET pos = -1 - pos WHERE proxy_id = NEW.id;
    UPDATE random_slots SET pos = (SELECT -1 - pos FROM random_slots WHERE proxy_id = NEW.id)
        WHERE pool_id = NEW.pool_id AND pos = (SELECT n - 1 FROM random_counts WHERE pool_id = NEW.pool_id);
    DELETE FROM random_slots WHERE proxy_id = NEW.id;
    UPDATE random_counts SET n = n - 1 WHERE pool_id = NEW.pool_id;
END;

CREATE TRIGGER proxies_random_delete AFTER DELETE ON proxies WHEN OLD.has_free_slot = 1
BEGIN
    UPDATE random_slots SET pos = -1 - pos WHERE proxy_id = OLD.id;
    UPDATE random_slots SET pos = (SELECT -1 - pos FROM random_slots WHERE proxy_id = OLD.id)
        WHERE pool_id = OLD.pool_id AND pos = (SELECT n - 1 FROM random_counts WHERE pool_id = OLD.pool_id);
    DELETE FROM random_slots WHERE proxy_id = OLD.id;
    UPDATE random_counts SET n = n - 1 WHERE pool_id = OLD.pool_id;
END;

-- Active leases by pool and expiry: an acquisition reclaims its own pool's
-- expired leases without walking those of every other pool, as the index
-- by expiry alone did. Bulk cleanup walks it pool by pool.
DROP INDEX leases_active_expiry;
CREATE INDEX leases_active_pool ON leases (pool_id, expires_at) WHERE status = 'active';
