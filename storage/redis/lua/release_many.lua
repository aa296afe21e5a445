-- release_many: the releases of one batch, each exactly as release.lua,
-- one after another (a lease named twice is released once, then reported
-- not active). ARGV: 2.. lease ids. Returns one entry per lease:
-- release.lua's reply, or the code of release.lua's error as a string.
local now = nil
-- Writes no item reads (the leases' moves from their pools' exp sets to
-- ended, the proxies' sets of ended leases, the pools' counters of leased
-- proxies) are made once for the batch (see new_deferred in lib.lua).
local d = new_deferred()
local out = {}
for i = 2, #ARGV do
  local lid = ARGV[i]
  local f = redis.call('HMGET', lk(lid), 'status', 'exp', 'proxy', 'pool', 'consumer', 'cname', 'pname', 'acq', 'sess', 'maxc')
  local r
  if not f[1] then
    r = 'PHAROX_LEASE_NOT_FOUND'
  elseif f[1] ~= 'active' then
    r = 'PHAROX_LEASE_NOT_ACTIVE'
  else
    if not now then now = now_us() end
    if tonumber(f[2]) <= now then
      end_lease(lid, 'expired', now, f[3], f[4], f[10], d)
      r = 'PHAROX_LEASE_NOT_ACTIVE expired'
    else
      end_lease(lid, 'released', now, f[3], f[4], f[10], d)
      r = {'status', 'released', 'exp', f[2], 'proxy', f[3], 'pool', f[4], 'consumer', f[5],
        'cname', f[6], 'pname', f[7], 'acq', f[8], 'sess', f[9], 'rel', fmt(now)}
    end
  end
  out[#out + 1] = r
end
flush(d)
return out
