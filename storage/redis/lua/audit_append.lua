-- append an audit entry. ARGV: 2 id, 3 at (us) or '' for now, 4 the entry
-- packed as JSON. An id already stored keeps its entry (a retried or
-- repeated append stores one). The audit sorted set's member is the
-- append's sequence number, 16 digits, ':' and the id, so entries with one
-- time list latest-appended first when read backwards.
local id = ARGV[2]
if redis.call('HEXISTS', P .. 'audit:e', id) == 1 then return 0 end
local at = ARGV[3]
if at == '' then at = fmt(now_us()) end
local seq = redis.call('INCR', P .. 'audit:seq')
redis.call('HSET', P .. 'audit:e', id, at .. '|' .. ARGV[4])
redis.call('ZADD', P .. 'audit', at, string.format('%016d', seq) .. ':' .. id)
return 1
