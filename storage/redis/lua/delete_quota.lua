-- delete quota. ARGV: 2 subject, 3 id, 4 the call's token (see once in
-- lib.lua). A proxy leaves its pool's set of exhausted allowances.
-- Returns 1.
local prior = once(ARGV[4])
if prior then return prior end
local subject, id = ARGV[2], ARGV[3]
if redis.call('HDEL', QUOTAS, subject .. '|' .. id) == 0 then return redis.error_reply('PHAROX_QUOTA_NOT_FOUND') end
if subject == 'proxy' then
  local pid = redis.call('HGET', xk(id), 'pool')
  if pid then sync_exhausted(pid, id, nil, 0) end
end
return done(ARGV[4], 1)
