-- Lease ids chosen by the caller (AcquireRequest.LeaseID, the service's
-- Idempotency-Key) are not version 7 UUIDs made from AcquiredAt, so the
-- purge's key-range walk cannot find them. They are marked, and a partial
-- index holds those that ended: leases with store-made ids pay nothing.
ALTER TABLE leases ADD COLUMN caller_id INTEGER NOT NULL DEFAULT 0;

CREATE INDEX leases_caller_id_ended ON leases (released_at) WHERE caller_id = 1 AND status <> 'active';
