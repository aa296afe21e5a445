-- renew. ARGV: 2 lease id, 3 duration (us).
local lid = ARGV[2]
local k = lk(lid)
local f = redis.call('HMGET', k, 'status', 'exp', 'proxy', 'pool', 'maxc')
if not f[1] then return redis.error_reply('PHAROX_LEASE_NOT_FOUND') end
if f[1] ~= 'active' then return redis.error_reply('PHAROX_LEASE_NOT_ACTIVE') end
local now = now_us()
if tonumber(f[2]) <= now then
  end_lease(lid, 'expired', now, f[3], f[4], f[5])
  return redis.error_reply('PHAROX_LEASE_NOT_ACTIVE expired')
end
local exp = fmt(now + tonumber(ARGV[3]))
redis.call('HSET', k, 'exp', exp)
redis.call('ZADD', pk(f[4], 'exp'), exp, lid)
return redis.call('HGETALL', k)
