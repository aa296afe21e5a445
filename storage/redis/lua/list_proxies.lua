-- list a pool's proxies in id order. ARGV: 2 pool id.
local pid = ARGV[2]
if redis.call('EXISTS', P .. 'pool:' .. pid) == 0 then return redis.error_reply('PHAROX_POOL_NOT_FOUND') end
reclaim(pid, now_us(), 1000000)
local out = {}
for i, id in ipairs(redis.call('ZRANGE', pk(pid, 'all'), 0, -1)) do out[i] = redis.call('HGETALL', xk(id)) end
return out
