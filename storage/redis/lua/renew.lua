-- renew. ARGV: 2 lease id, 3 duration (us). Returns the new record.
local lid = ARGV[2]
local v = redis.call('HGET', LEASES, lid)
if not v then return redis.error_reply('PHAROX_LEASE_NOT_FOUND') end
local st, exp, proxy, pid, maxc, q = lease_fields(v)
if st ~= 'active' then return redis.error_reply('PHAROX_LEASE_NOT_ACTIVE') end
local now = now_us()
if tonumber(exp) <= now then
  end_lease(lid, v, 'expired', now, proxy, pid, maxc, q)
  return redis.error_reply('PHAROX_LEASE_NOT_ACTIVE expired')
end
local nexp = fmt(now + tonumber(ARGV[3]))
-- An active record is 'active||' then exp: replace exp, keep the rest.
v = 'active||' .. nexp .. string.sub(v, #'active||' + #exp + 1)
redis.call('HSET', LEASES, lid, v)
redis.call('ZADD', pk(pid, 'exp'), nexp, lid)
if q ~= '' then redis.call('ZADD', cact(q), nexp, lid) end
return v
