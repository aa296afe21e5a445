-- read a target entry for ApplyTargetOutcome. ARGV: 2 proxy id, 3 target.
-- Returns {now (us), the entry's record or false}.
local k = xk(ARGV[2])
if redis.call('EXISTS', k) == 0 then return redis.error_reply('PHAROX_PROXY_NOT_FOUND') end
return {fmt(now_us()), redis.call('HGET', k .. ':t', ARGV[3])}
