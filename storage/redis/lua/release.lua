-- release. ARGV: 2 lease id. Returns the lease's fields (LEASE order) with
-- the new status and rel, saving a read of the hash.
local lid = ARGV[2]
local k = lk(lid)
local f = redis.call('HMGET', k, 'status', 'exp', 'proxy', 'pool', 'consumer', 'cname', 'pname', 'acq', 'sess', 'maxc')
if not f[1] then return redis.error_reply('PHAROX_LEASE_NOT_FOUND') end
if f[1] ~= 'active' then return redis.error_reply('PHAROX_LEASE_NOT_ACTIVE') end
local now = now_us()
if tonumber(f[2]) <= now then
  end_lease(lid, 'expired', now, f[3], f[4], f[10])
  return redis.error_reply('PHAROX_LEASE_NOT_ACTIVE expired')
end
end_lease(lid, 'released', now, f[3], f[4], f[10])
return {'status', 'released', 'exp', f[2], 'proxy', f[3], 'pool', f[4], 'consumer', f[5],
  'cname', f[6], 'pname', f[7], 'acq', f[8], 'sess', f[9], 'rel', fmt(now)}
