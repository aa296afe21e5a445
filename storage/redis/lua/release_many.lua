-- release_many: the releases of one batch, each exactly as release.lua,
-- one after another (a lease named twice is released once, then reported
-- not active). ARGV: 2 the usage buckets' retention (s, 0 for none), then
-- for each release: the lease id, the call's token (see end_lease in
-- lib.lua) and its usage report ('' for none; see release.lua). Returns
-- one entry per lease: its new record, as release.lua returns it, or the
-- code of release.lua's error.
local ids, toks, uses = {}, {}, {}
for i = 3, #ARGV, 3 do
  ids[#ids + 1] = ARGV[i]
  toks[#toks + 1] = ARGV[i + 1]
  uses[#uses + 1] = ARGV[i + 2]
end
local vals = redis.call('HMGET', LEASES, unpack(ids))
local now = nil
-- Every write is made once for the batch, at the end (see new_deferred in
-- lib.lua): the records, the leases' moves from their pools' exp sets to
-- ended, the proxies' sets of ended leases and slots, the pools' counters,
-- and the usage reports' buckets and quota counters (see quota.lua).
-- done holds the leases this batch ended, which vals still shows active.
local d = new_deferred()
local acc = new_usage()
local done = {}
local out = {}
for i, lid in ipairs(ids) do
  local v = vals[i]
  local r
  if not v then
    r = 'PHAROX_LEASE_NOT_FOUND'
  else
    local st, exp, proxy, pid, maxc, q = lease_fields(v)
    if st ~= 'active' and released_by(v, toks[i]) then
      r = v
    elseif st ~= 'active' or done[lid] then
      r = 'PHAROX_LEASE_NOT_ACTIVE'
    else
      if not now then now = now_us() end
      done[lid] = true
      if tonumber(exp) <= now then
        end_lease(lid, v, 'expired', now, proxy, pid, maxc, q, d)
        r = 'PHAROX_LEASE_NOT_ACTIVE expired'
      elseif uses[i] == '' then
        r = end_lease(lid, v, 'released', now, proxy, pid, maxc, q, d, toks[i])
      else
        usage_note(acc, v, proxy, pid, uses[i])
        r = end_lease(lid, v, 'released', now, proxy, pid, maxc, q, d, toks[i], uses[i])
      end
    end
  end
  out[#out + 1] = r
end
flush(d)
if now then usage_flush(acc, now, tonumber(ARGV[2])) end
return out
