-- delete proxy. ARGV: 2 id, 3 the call's token (see once in lib.lua).
local prior = once(ARGV[3])
if prior then return prior end
local id = ARGV[2]
local pid = redis.call('HGET', xk(id), 'pool')
if not pid then return redis.error_reply('PHAROX_PROXY_NOT_FOUND') end
reclaim(pid, now_us(), 1000000)
if tonumber(redis.call('HGET', xk(id), 'cur')) > 0 then return redis.error_reply('PHAROX_IN_USE') end
remove_proxy(pid, id)
return done(ARGV[3], 1)
