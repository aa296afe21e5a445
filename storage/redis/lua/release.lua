-- release. ARGV: 2 lease id, 3 the call's token (see end_lease in
-- lib.lua), 4 the usage report, "requests,sent,received", or '' for none,
-- 5 the usage buckets' retention (s, 0 for none). Returns the lease's new
-- record (see LEASES in lib.lua), saving a read; the same call sent again
-- returns the record it made, counting nothing again.
local lid, tok, use = ARGV[2], ARGV[3], ARGV[4]
local v = redis.call('HGET', LEASES, lid)
if not v then return redis.error_reply('PHAROX_LEASE_NOT_FOUND') end
local st, exp, proxy, pid, maxc, q = lease_fields(v)
if st ~= 'active' then
  if released_by(v, tok) then return v end
  return redis.error_reply('PHAROX_LEASE_NOT_ACTIVE')
end
local now = now_us()
if tonumber(exp) <= now then
  end_lease(lid, v, 'expired', now, proxy, pid, maxc, q)
  return redis.error_reply('PHAROX_LEASE_NOT_ACTIVE expired')
end
if use == '' then return end_lease(lid, v, 'released', now, proxy, pid, maxc, q, nil, tok) end
local acc = new_usage()
usage_note(acc, v, proxy, pid, use)
usage_flush(acc, now, tonumber(ARGV[5]))
return end_lease(lid, v, 'released', now, proxy, pid, maxc, q, nil, tok, use)
