-- Quotas and usage accounting (see doc.go, Usage and quotas). The
-- functions named after pharox's reference rules mirror them exactly
-- (TestQuotaRulesMatchGo compares them on random quotas and times): times
-- are microseconds, tokens are doubles computed in the same operations as
-- Go's float64 code, so both round alike.
--
-- QUOTAS is one hash: '<subject>|<id>' -> the quota's record, and
-- 'x|<pid>' -> '1' while the pool's set of proxies with an exhausted
-- traffic allowance (p:<pid>:xh) may have members. An acquisition reads
-- the three fields it needs with one HMGET, which is all a store without
-- quotas pays.
local DAY_US = 86400000000
local HOUR_US = 3600000000
local MIN_US = 60000000
local HOURS = P .. 'usage:hours'

-- days_from_civil and civil_from_days convert between a proleptic
-- Gregorian date and days since 1970-01-01 (H. Hinnant's algorithms).
local floor = math.floor
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = m + 9
  if m > 2 then mp = m - 3 end
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function civil_from_days(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

-- idiv returns floor(a / b) for integers a and b > 0, exact where a / b
-- in doubles could round up to the next integer.
local function idiv(a, b)
  local n = floor(a / b)
  local r = a - n * b
  if r < 0 then n = n - 1 elseif r >= b then n = n + 1 end
  return n
end

-- day_start mirrors pharox.DayStart; month_start pharox.MonthStart;
-- month_end is the start of the month after month_start's.
local function day_start(t) return idiv(t, DAY_US) * DAY_US end
local function month_start(t)
  local y, m = civil_from_days(idiv(t, DAY_US))
  return days_from_civil(y, m, 1) * DAY_US
end
local function month_end(t)
  local y, m = civil_from_days(idiv(t, DAY_US))
  if m == 12 then y, m = y + 1, 1 else m = m + 1 end
  return days_from_civil(y, m, 1) * DAY_US
end

-- A quota's record is "mcl rpm bpd bpm day bt month bm tok tokat upd": the
-- limits (max_concurrent_leases, requests_per_minute, bytes_per_day,
-- bytes_per_month), the day and bytes counted in it, the month and bytes
-- counted in it, the request bucket's tokens (as %.17g, which reads back
-- as the same double) and when they were counted, and when the limits
-- were set. Times are in us, 0 for unset.
-- qparse reads a record's limits; qcounters the rest, the first time a
-- rule needs them (an acquisition under a cap alone reads four numbers).
-- Zeros, the common value, skip tonumber (strtod).
local function num(w)
  if w == '0' then return 0 end
  return tonumber(w)
end
local function qparse(s)
  local find, sub = string.find, string.sub
  local a = find(s, ' ', 1, true)
  local b = find(s, ' ', a + 1, true)
  local c = find(s, ' ', b + 1, true)
  local d = find(s, ' ', c + 1, true)
  return {mcl = num(sub(s, 1, a - 1)), rpm = num(sub(s, a + 1, b - 1)), bpd = num(sub(s, b + 1, c - 1)),
    bpm = num(sub(s, c + 1, d - 1)), raw = s, at = d + 1}
end
local function qcounters(q)
  if q.day ~= nil then return end
  local t, i = {}, 0
  for w in string.gmatch(string.sub(q.raw, q.at), '%S+') do i = i + 1 t[i] = w end
  q.day, q.bt, q.month, q.bm = num(t[1]), num(t[2]), num(t[3]), num(t[4])
  q.tok, q.tokat, q.upd = num(t[5]), num(t[6]), num(t[7])
end
local function qformat(q)
  qcounters(q)
  local f = function(n) return string.format('%d', n) end
  return table.concat({f(q.mcl), f(q.rpm), f(q.bpd), f(q.bpm), f(q.day), f(q.bt), f(q.month), f(q.bm),
    string.format('%.17g', q.tok), f(q.tokat), f(q.upd)}, ' ')
end

-- rolled mirrors pharox.Quota.RollPeriods, returning the rolled counters
-- (day, bytes today, month, bytes this month) without changing q.
local function rolled(q, now)
  qcounters(q)
  local day, bt, month, bm = q.day, q.bt, q.month, q.bm
  local d = day_start(now)
  if day ~= d then day, bt = d, 0 end
  local m = month_start(now)
  if month ~= m then month, bm = m, 0 end
  return day, bt, month, bm
end

-- refill mirrors pharox.Quota.RefillTokens: Go's Duration.Minutes is
-- whole minutes plus the remaining nanoseconds / 6e10, computed here from
-- the same integers.
local function refill(q, now)
  local cap = q.rpm
  qcounters(q)
  if q.tokat == 0 then return cap end
  local e = now - q.tokat
  if e < 0 then e = 0 end
  local mins = idiv(e, MIN_US)
  local minutes = mins + ((e - mins * MIN_US) * 1000) / 60000000000
  local x = q.tok + minutes * cap
  if cap < x then return cap end
  return x
end

-- refusal is the error code of an acquisition a quota refused, which the
-- client turns into a *pharox.QuotaError: subject, id, limit, its value
-- and RetryAfter in ns.
local function refusal(subject, id, limit, value, retry_ns)
  return 'PHAROX_QUOTA_EXCEEDED ' .. subject .. ' ' .. id .. ' ' .. limit .. ' ' ..
    string.format('%d', value) .. ' ' .. string.format('%d', retry_ns)
end

-- admit mirrors pharox.Quota.Admit for a consumer or pool quota; active
-- is the subject's active unexpired leases (read only when q.mcl > 0). It
-- returns nil or a refusal.
local function admit(q, subject, id, active, now)
  if q.mcl > 0 and active >= q.mcl then
    return refusal(subject, id, 'max_concurrent_leases', q.mcl, 1000000000)
  end
  if q.bpd > 0 or q.bpm > 0 then
    local day, bt, month, bm = rolled(q, now)
    if q.bpd > 0 and bt >= q.bpd then
      return refusal(subject, id, 'bytes_per_day', q.bpd, (day + DAY_US - now) * 1000)
    end
    if q.bpm > 0 and bm >= q.bpm then
      return refusal(subject, id, 'bytes_per_month', q.bpm, (month_end(month) - now) * 1000)
    end
  end
  if q.rpm > 0 then
    local tokens = refill(q, now)
    if tokens < 1 then
      return refusal(subject, id, 'requests_per_minute', q.rpm, math.ceil((1 - tokens) * 60000000000 / q.rpm))
    end
  end
  return nil
end

-- take mirrors pharox.Quota.TakeToken; it reports whether q changed.
local function take(q, now)
  if q.rpm <= 0 then return false end
  q.tok = refill(q, now) - 1
  q.tokat = now
  return true
end

-- add_bytes mirrors pharox.Quota.AddBytes.
local function add_bytes(q, n, now)
  q.day, q.bt, q.month, q.bm = rolled(q, now)
  q.bt = q.bt + n
  q.bm = q.bm + n
end

-- exhausted_until mirrors pharox.Quota.ExhaustedUntil (0 for the zero time).
local function exhausted_until(q, now)
  local day, bt, month, bm = rolled(q, now)
  local u = 0
  if q.bpd > 0 and bt >= q.bpd then u = day + DAY_US end
  if q.bpm > 0 and bm >= q.bpm then u = month_end(month) end
  return u
end

-- sync_exhausted puts proxy id in its pool's set of exhausted allowances
-- (p:<pid>:xh, scored by when the allowance resets) when quota q is used
-- up at now, and takes it out otherwise; selection skips the members
-- whose score is still ahead (see COOL in select.lua).
local function sync_exhausted(pid, id, q, now)
  local u = 0
  if q then u = exhausted_until(q, now) end
  if u > 0 then
    redis.call('ZADD', pk(pid, 'xh'), fmt(u), id)
    redis.call('HSET', QUOTAS, 'x|' .. pid, '1')
  elseif redis.call('ZREM', pk(pid, 'xh'), id) == 1 and redis.call('ZCARD', pk(pid, 'xh')) == 0 then
    redis.call('HDEL', QUOTAS, 'x|' .. pid)
  end
end

-- active_in counts the members of a sorted set of active leases by
-- ExpiresAt that have not expired at now.
local function active_in(key, now)
  return redis.call('ZCOUNT', key, '(' .. fmt(now), '+inf')
end

-- Usage reports. A release with one notes it in an accumulator (new_usage)
-- and the script flushes it once: the hourly bucket usage:<hour start,
-- unix seconds> is a hash of "<consumer>|<proxy>|<pool>|<target>" ->
-- "leases requests bytes_sent bytes_received", and the byte counters of
-- the quotas of the leases' consumers, pools and proxies grow.
local function new_usage() return {groups = {}, order = {}, bytes = {}, subjects = {}, pools = {}} end

local function usage_note(acc, v, proxy, pid, use)
  local cid, target = lease_target(v)
  local c1 = string.find(use, ',', 1, true)
  local c2 = string.find(use, ',', c1 + 1, true)
  local req = tonumber(string.sub(use, 1, c1 - 1))
  local sent, recv = tonumber(string.sub(use, c1 + 1, c2 - 1)), tonumber(string.sub(use, c2 + 1))
  local f = cid .. '|' .. proxy .. '|' .. pid .. '|' .. target
  local g = acc.groups[f]
  if not g then
    g = {0, 0, 0, 0}
    acc.groups[f] = g
    acc.order[#acc.order + 1] = f
  end
  g[1], g[2], g[3], g[4] = g[1] + 1, g[2] + req, g[3] + sent, g[4] + recv
  for _, s in ipairs({'consumer|' .. cid, 'pool|' .. pid, 'proxy|' .. proxy}) do
    if not acc.bytes[s] then acc.subjects[#acc.subjects + 1] = s end
    acc.bytes[s] = (acc.bytes[s] or 0) + sent + recv
  end
  acc.pools[proxy] = pid
end

-- usage_flush writes acc at now; retention (seconds, 0 for none) is how
-- long the bucket lives.
local function usage_flush(acc, now, retention)
  if #acc.order == 0 then return end
  local hour = idiv(now, HOUR_US) * 3600
  local key = P .. 'usage:' .. fmt(hour)
  for i = 1, #acc.order, 256 do
    local part = {unpack(acc.order, i, math.min(i + 255, #acc.order))}
    local cur = redis.call('HMGET', key, unpack(part))
    local args = {}
    for j, f in ipairs(part) do
      local g = acc.groups[f]
      if cur[j] then
        local k = 0
        for w in string.gmatch(cur[j], '%S+') do k = k + 1 g[k] = g[k] + tonumber(w) end
      end
      args[#args + 1] = f
      args[#args + 1] = string.format('%d %d %d %d', g[1], g[2], g[3], g[4])
    end
    redis.call('HSET', key, unpack(args))
  end
  if redis.call('ZADD', HOURS, 'NX', fmt(hour), fmt(hour)) == 1 and retention > 0 then
    redis.call('ZREMRANGEBYSCORE', HOURS, '-inf', '(' .. fmt(hour - retention))
  end
  if retention > 0 then redis.call('EXPIREAT', key, fmt(hour + retention)) end
  local vals = redis.call('HMGET', QUOTAS, unpack(acc.subjects))
  local args = {}
  for i, s in ipairs(acc.subjects) do
    if vals[i] then
      local q = qparse(vals[i])
      add_bytes(q, acc.bytes[s], now)
      args[#args + 1] = s
      args[#args + 1] = qformat(q)
      if string.sub(s, 1, 6) == 'proxy|' then
        local id = string.sub(s, 7)
        sync_exhausted(acc.pools[id], id, q, now)
      end
    end
  end
  if #args > 0 then redis.call('HSET', QUOTAS, unpack(args)) end
end
