-- release_many: the releases of one batch, each exactly as release.lua,
-- one after another (a lease named twice is released once, then reported
-- not active). ARGV: 2.. lease id and the call's token (see end_lease in
-- lib.lua) for each release. Returns one entry per lease: its new record,
-- as release.lua returns it, or the code of release.lua's error.
local ids, toks = {}, {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  toks[#toks + 1] = ARGV[i + 1]
end
local vals = redis.call('HMGET', LEASES, unpack(ids))
local now = nil
-- Every write is made once for the batch, at the end (see new_deferred in
-- lib.lua): the records, the leases' moves from their pools' exp sets to
-- ended, the proxies' sets of ended leases and slots, the pools' counters.
-- done holds the leases this batch ended, which vals still shows active.
local d = new_deferred()
local done = {}
local out = {}
for i, lid in ipairs(ids) do
  local v = vals[i]
  local r
  if not v then
    r = 'PHAROX_LEASE_NOT_FOUND'
  else
    local st, exp, proxy, pid, maxc = lease_fields(v)
    if st ~= 'active' and released_by(v, toks[i]) then
      r = v
    elseif st ~= 'active' or done[lid] then
      r = 'PHAROX_LEASE_NOT_ACTIVE'
    else
      if not now then now = now_us() end
      done[lid] = true
      if tonumber(exp) <= now then
        end_lease(lid, v, 'expired', now, proxy, pid, maxc, d)
        r = 'PHAROX_LEASE_NOT_ACTIVE expired'
      else
        r = end_lease(lid, v, 'released', now, proxy, pid, maxc, d, toks[i])
      end
    end
  end
  out[#out + 1] = r
end
flush(d)
return out
