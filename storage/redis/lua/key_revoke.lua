-- revoke api key. ARGV: 2 id. Stamps revoked once; returns the key hash.
local k = P .. 'key:' .. ARGV[2]
if redis.call('EXISTS', k) == 0 then return redis.error_reply('PHAROX_KEY_NOT_FOUND') end
if blank(redis.call('HGET', k, 'revoked')) then
  redis.call('HSET', k, 'revoked', fmt(now_us()))
end
return redis.call('HGETALL', k)
