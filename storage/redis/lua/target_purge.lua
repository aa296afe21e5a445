-- purge target entries. ARGV: 2 idle before (us, exclusive), 3 batch size.
-- Returns {deleted, entries read}.
local old = redis.call('ZRANGEBYSCORE', P .. 'tidle', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, m in ipairs(old) do
  local id, t = string.sub(m, 1, 36), string.sub(m, 38)
  local pid = redis.call('HGET', xk(id), 'pool')
  if pid then n = n + drop_target(pid, id, t) end
  redis.call('ZREM', P .. 'tidle', m)
end
return {n, #old}
