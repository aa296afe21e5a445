-- rotate api key. ARGV: 2 id, 3 new digest (hex), 4 new hint. Moves the
-- digest lookup from the old digest to the new one; returns the key hash.
-- Sent again (a client's retry), it finds the new digest already its own
-- and returns the key as rotated.
local id, dg = ARGV[2], ARGV[3]
local k = P .. 'key:' .. id
local f = redis.call('HMGET', k, 'dg', 'revoked')
if not f[1] then return redis.error_reply('PHAROX_KEY_NOT_FOUND') end
if not blank(f[2]) then return redis.error_reply('PHAROX_KEY_REVOKED') end
local owner = redis.call('HGET', P .. 'keydigests', dg)
if owner and owner ~= id then return redis.error_reply('PHAROX_ALREADY_EXISTS key digest') end
if f[1] ~= dg then redis.call('HDEL', P .. 'keydigests', f[1]) end
redis.call('HSET', P .. 'keydigests', dg, id)
redis.call('HSET', k, 'dg', dg, 'hint', ARGV[4])
return redis.call('HGETALL', k)
