-- get proxy after reclaiming its pool's expired leases. ARGV: 2 id.
local pid = redis.call('HGET', xk(ARGV[2]), 'pool')
if not pid then return false end
reclaim(pid, now_us(), RECLAIM)
return redis.call('HGETALL', xk(ARGV[2]))
