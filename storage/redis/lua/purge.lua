-- purge ended leases. ARGV: 2 ended-before (us, exclusive), 3 batch size.
local old = redis.call('ZRANGEBYSCORE', P .. 'ended', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, lid in ipairs(old) do delete_lease(lid) end
return #old
