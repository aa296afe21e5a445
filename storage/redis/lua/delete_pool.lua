-- delete pool. ARGV: 2 pool id, 3 the call's token (see once in lib.lua).
local prior = once(ARGV[3])
if prior then return prior end
local pid = ARGV[2]
local name = redis.call('HGET', P .. 'pool:' .. pid, 'name')
if not name then return redis.error_reply('PHAROX_POOL_NOT_FOUND') end
reclaim(pid, now_us(), 1000000)
if redis.call('ZCARD', pk(pid, 'exp')) > 0 then return redis.error_reply('PHAROX_IN_USE') end
for _, id in ipairs(redis.call('ZRANGE', pk(pid, 'all'), 0, -1)) do remove_proxy(pid, id) end
for _, s in ipairs({'all', 'free', 'fa:0', 'fa:1', 'lu', 'exp', 'cnt', 'uniq', 'rr', 'sess', 'sessexp', 'geo', 'polar', 'ff', 'tn', 'xh'}) do
  redis.call('DEL', pk(pid, s))
end
redis.call('HDEL', QUOTAS, 'pool|' .. pid, 'x|' .. pid)
redis.call('HDEL', P .. 'pools', name)
redis.call('DEL', P .. 'pool:' .. pid)
return done(ARGV[3], 1)
