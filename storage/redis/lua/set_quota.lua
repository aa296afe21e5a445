-- set quota. ARGV: 2 subject ('consumer', 'pool' or 'proxy'), 3 its id,
-- 4-7 the limits (max_concurrent_leases, requests_per_minute,
-- bytes_per_day, bytes_per_month), 8 for a new quota the client's sums of
-- the subject's usage buckets, "day month hour bytes_day bytes_month":
-- the bytes of the hours from the month's (and the day's) start to hour
-- (unix seconds, exclusive), or ''. Returns {now, the stored record}.
-- A quota that exists keeps its counters and tokens (at most the new
-- requests_per_minute). A new one needs the sums: without them, or when
-- the day or month they were taken for is not now's, it fails with
-- PHAROX_QUOTA_SUMS and the client sums again; the script adds the hours
-- from hour to now's itself, so that no release falls between the sums
-- and the quota.
local subject, id = ARGV[2], ARGV[3]
local pid = nil
if subject == 'consumer' then
  if redis.call('SISMEMBER', P .. 'cids', id) == 0 then return redis.error_reply('PHAROX_CONSUMER_NOT_FOUND') end
elseif subject == 'pool' then
  if redis.call('EXISTS', P .. 'pool:' .. id) == 0 then return redis.error_reply('PHAROX_POOL_NOT_FOUND') end
else
  pid = redis.call('HGET', xk(id), 'pool')
  if not pid then return redis.error_reply('PHAROX_PROXY_NOT_FOUND') end
end
local now = now_us()
local field = subject .. '|' .. id
local old = redis.call('HGET', QUOTAS, field)
local q
if old then
  q = qparse(old)
  qcounters(q)
  q.mcl, q.rpm, q.bpd, q.bpm = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  if q.tok > q.rpm then q.tok = q.rpm end
else
  if ARGV[8] == '' then return redis.error_reply('PHAROX_QUOTA_SUMS') end
  local s = {}
  for w in string.gmatch(ARGV[8], '%S+') do s[#s + 1] = tonumber(w) end
  local day, month = day_start(now), month_start(now)
  if s[1] ~= day or s[2] ~= month then return redis.error_reply('PHAROX_QUOTA_SUMS') end
  local bd, bm = s[4], s[5]
  -- The subject's id sits at a fixed place in a bucket's field
  -- ("<consumer>|<proxy>|<pool>|<target>", ids of 36 bytes).
  local at = ({consumer = 1, proxy = 38, pool = 75})[subject]
  for h = s[3], idiv(now, HOUR_US) * 3600, 3600 do
    if h * 1000000 >= month then
      local all = redis.call('HGETALL', P .. 'usage:' .. fmt(h))
      for i = 1, #all, 2 do
        if string.sub(all[i], at, at + 35) == id then
          local k, n = 0, 0
          for w in string.gmatch(all[i + 1], '%S+') do
            k = k + 1
            if k >= 3 then n = n + tonumber(w) end
          end
          bm = bm + n
          if h * 1000000 >= day then bd = bd + n end
        end
      end
    end
  end
  q = {mcl = tonumber(ARGV[4]), rpm = tonumber(ARGV[5]), bpd = tonumber(ARGV[6]), bpm = tonumber(ARGV[7]),
    day = day, bt = bd, month = month, bm = bm, tok = tonumber(ARGV[5]), tokat = 0}
end
q.upd = now
redis.call('HSET', QUOTAS, field, qformat(q))
if pid then sync_exhausted(pid, id, q, now) end
return {fmt(now), qformat(q)}
