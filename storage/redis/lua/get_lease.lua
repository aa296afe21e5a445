-- get lease, ending it first if it has expired. ARGV: 2 lease id.
local lid = ARGV[2]
local k = lk(lid)
local f = redis.call('HMGET', k, 'status', 'exp', 'proxy', 'pool', 'maxc')
if not f[1] then return false end
if f[1] == 'active' then
  local now = now_us()
  if tonumber(f[2]) <= now then end_lease(lid, 'expired', now, f[3], f[4], f[5]) end
end
return redis.call('HGETALL', k)
