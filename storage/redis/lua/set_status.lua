-- set proxy status by hand. ARGV: 2 id, 3 status.
local id, st = ARGV[2], ARGV[3]
local k = xk(id)
local pid = redis.call('HGET', k, 'pool')
if not pid then return redis.error_reply('PHAROX_PROXY_NOT_FOUND') end
local now = now_us()
reclaim(pid, now, RECLAIM)
local f = redis.call('HMGET', k, 'status', 'cur', 'maxc', 'chk')
redis.call('HSET', k, 'streak', 0)
if f[1] ~= st then
  redis.call('HSET', k, 'status', st, 'chg', fmt(now))
  redis.call('HINCRBY', pk(pid, 'cnt'), f[1], -1)
  redis.call('HINCRBY', pk(pid, 'cnt'), st, 1)
  sync_free(pid, id, st, tonumber(f[2]), f[3], f[4])
end
return redis.call('HGETALL', k)
