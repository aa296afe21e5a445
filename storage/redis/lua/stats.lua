-- pool stats. ARGV: 2 pool name. Returns {now, total, available, leases, cnt...}.
local pid = redis.call('HGET', P .. 'pools', ARGV[2])
if not pid then return redis.error_reply('PHAROX_POOL_NOT_FOUND') end
local now = now_us()
reclaim(pid, now, RECLAIM)
return {fmt(now), redis.call('ZCARD', pk(pid, 'all')), redis.call('ZCARD', pk(pid, 'free')),
  redis.call('ZCARD', pk(pid, 'exp')), redis.call('HGETALL', pk(pid, 'cnt'))}
