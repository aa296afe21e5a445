-- purge usage buckets. ARGV: 2 the first hour kept (unix seconds), 3 how
-- many hours at most, 4 the call's token (see once in lib.lua). Returns
-- {buckets deleted (the groups of the hours' hashes), hours deleted}.
local prior = once(ARGV[4])
if prior then return prior end
local hours = redis.call('ZRANGEBYSCORE', HOURS, '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, h in ipairs(hours) do
  local key = P .. 'usage:' .. h
  n = n + redis.call('HLEN', key)
  redis.call('UNLINK', key)
  redis.call('ZREM', HOURS, h)
end
return done(ARGV[4], {n, #hours})
