-- get lease, ending it first if it has expired. ARGV: 2 lease id. Returns
-- its record (see LEASES in lib.lua), or false.
local lid = ARGV[2]
local v = redis.call('HGET', LEASES, lid)
if not v then return false end
local st, exp, proxy, pid, maxc, q = lease_fields(v)
if st == 'active' then
  local now = now_us()
  if tonumber(exp) <= now then v = end_lease(lid, v, 'expired', now, proxy, pid, maxc, q) end
end
return v
