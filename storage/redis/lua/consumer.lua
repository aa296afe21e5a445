-- ensure consumer. ARGV: 2 name, 3 id to use if new. Returns "id|created".
local v = redis.call('HGET', P .. 'consumers', ARGV[2])
if v then return v end
v = ARGV[3] .. '|' .. fmt(now_us())
redis.call('HSET', P .. 'consumers', ARGV[2], v)
redis.call('SADD', P .. 'cids', ARGV[3])
return v
