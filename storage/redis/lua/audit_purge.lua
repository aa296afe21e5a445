-- purge audit entries. ARGV: 2 before (us, exclusive), 3 batch size.
-- Returns how many it deleted.
local old = redis.call('ZRANGEBYSCORE', P .. 'audit', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
if #old == 0 then return 0 end
local ids = {}
for i, m in ipairs(old) do ids[i] = string.sub(m, 18) end
redis.call('HDEL', P .. 'audit:e', unpack(ids))
redis.call('ZREM', P .. 'audit', unpack(old))
return #old
