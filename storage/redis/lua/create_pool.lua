-- create pool. ARGV: 2 id, 3 name, 4 description, 5 the call's token (see
-- once in lib.lua). Returns created (us).
local prior = once(ARGV[5])
if prior then return prior end
if redis.call('HEXISTS', P .. 'pools', ARGV[3]) == 1 then
  return redis.error_reply('PHAROX_ALREADY_EXISTS name')
end
if redis.call('EXISTS', P .. 'pool:' .. ARGV[2]) == 1 then
  return redis.error_reply('PHAROX_ALREADY_EXISTS id')
end
local now = fmt(now_us())
redis.call('HSET', P .. 'pools', ARGV[3], ARGV[2])
redis.call('HSET', P .. 'pool:' .. ARGV[2], 'name', ARGV[3], 'desc', ARGV[4], 'created', now)
return done(ARGV[5], now)
