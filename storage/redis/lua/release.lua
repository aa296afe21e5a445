-- release. ARGV: 2 lease id, 3 the call's token (see end_lease in
-- lib.lua). Returns the lease's new record (see LEASES in lib.lua), saving
-- a read; the same call sent again returns the record it made.
local lid, tok = ARGV[2], ARGV[3]
local v = redis.call('HGET', LEASES, lid)
if not v then return redis.error_reply('PHAROX_LEASE_NOT_FOUND') end
local st, exp, proxy, pid, maxc = lease_fields(v)
if st ~= 'active' then
  if released_by(v, tok) then return v end
  return redis.error_reply('PHAROX_LEASE_NOT_ACTIVE')
end
local now = now_us()
if tonumber(exp) <= now then
  end_lease(lid, v, 'expired', now, proxy, pid, maxc)
  return redis.error_reply('PHAROX_LEASE_NOT_ACTIVE expired')
end
return end_lease(lid, v, 'released', now, proxy, pid, maxc, nil, tok)
