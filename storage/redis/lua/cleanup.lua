-- cleanup. ARGV: 2 budget (leases per call), 3 retention of ended leases
-- (us, 0 keeps them). Returns {ended, more}. It also drops the pools'
-- exhausted allowances that have reset.
local budget = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
local now = now_us()
local ended, more = 0, 0
for _, pid in ipairs(redis.call('HVALS', P .. 'pools')) do
  local left = budget - ended
  if left <= 0 then more = 1 break end
  local n = reclaim(pid, now, left)
  ended = ended + n
  if n == left then more = 1 end
  local dead = redis.call('ZRANGEBYSCORE', pk(pid, 'sessexp'), '-inf', fmt(now), 'LIMIT', 0, budget)
  for _, key in ipairs(dead) do
    redis.call('HDEL', pk(pid, 'sess'), key)
    redis.call('ZREM', pk(pid, 'sessexp'), key)
  end
  if #dead == budget then more = 1 end
  -- Exhausted allowances that have reset (see sync_exhausted in quota.lua).
  local xh = pk(pid, 'xh')
  if redis.call('ZREMRANGEBYSCORE', xh, '-inf', fmt(now)) > 0 and redis.call('ZCARD', xh) == 0 then
    redis.call('HDEL', QUOTAS, 'x|' .. pid)
  end
end
if retention > 0 then
  local old = redis.call('ZRANGEBYSCORE', P .. 'ended', '-inf', '(' .. fmt(now - retention), 'LIMIT', 0, budget)
  for _, lid in ipairs(old) do delete_lease(lid) end
  if #old == budget then more = 1 end
end
return {ended, more}
