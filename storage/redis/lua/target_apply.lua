-- apply a target outcome, mirroring pharox.TargetState.Apply. ARGV: 2
-- proxy id, 3 target, 4 kind (success, failure or banned), 5 status
-- code, 6 reason, 7 the outcome's time (us; '' for the server's now),
-- 8 the call's token, 9 the policy's FailureThreshold, 10 its Retention
-- (us, rounded down), 11 MaxTargetsPerProxy, 12 EscalateWindow (us,
-- rounded down), then from 13 the cool-downs (us) of the 1st, 2nd, ...
-- ban in a row, computed by the client with TargetPolicy.Cooldown up to
-- the first that reaches MaxCooldown (later bans last as long).
-- Returns {the entry's new record, how many of the proxy's entries started
-- a cool-down within EscalateWindow before the outcome's time}. Finding
-- its own token in the record (a client's retry of this very call), it
-- returns the record as it is.
local id, t, kind = ARGV[2], ARGV[3], ARGV[4]
local k = xk(id)
local pid = redis.call('HGET', k, 'pool')
if not pid then return redis.error_reply('PHAROX_PROXY_NOT_FOUND') end
local now = ARGV[7]
if now == '' then now = now_us() else now = tonumber(now) end
local rec = redis.call('HGET', k .. ':t', t)
local s = parse_target(rec)
if s.tok == ARGV[8] then
  return {rec, redis.call('ZCOUNT', k .. ':tb', fmt(now - tonumber(ARGV[12])), '+inf')}
end
if target_idle(s) < now - tonumber(ARGV[10]) then s = parse_target(false) end
local cooling = s.cool and s.cool > now
if kind == 'success' then
  s.streak, s.succ = 0, now
  if not cooling then s.bans, s.cool = 0, nil end
else
  s.fail, s.reason, s.code = now, ARGV[6], ARGV[5]
  if not cooling then
    s.streak = s.streak + 1
    if kind == 'banned' or s.streak >= tonumber(ARGV[9]) then
      s.bans = s.bans + 1
      s.cool = now + tonumber(ARGV[math.min(12 + s.bans, #ARGV)])
      s.banned, s.streak = now, 0
    end
  end
end
s.upd, s.tok = now, ARGV[8]
local new = format_target(s)
redis.call('HSET', k .. ':t', t, new)
local function opt(n) if n then return fmt(n) end return '' end
index_target(pid, id, t, opt(s.cool), opt(s.banned), fmt(target_idle(s)))
if not rec then
  redis.call('HINCRBY', pk(pid, 'tn'), t, '1')
  -- A new entry beyond the cap evicts the longest-idle others (ties: the
  -- first target in byte order).
  local over = redis.call('HLEN', k .. ':t') - tonumber(ARGV[11])
  if over > 0 then
    for _, v in ipairs(redis.call('ZRANGE', k .. ':ti', 0, over)) do
      if over == 0 then break end
      if v ~= t then over = over - drop_target(pid, id, v) end
    end
  end
end
return {new, redis.call('ZCOUNT', k .. ':tb', fmt(now - tonumber(ARGV[12])), '+inf')}
