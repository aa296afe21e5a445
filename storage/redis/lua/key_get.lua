-- get api key. ARGV: 2 what ARGV 3 is: 'id', 'name' or 'digest' (hex).
-- Returns {id, the key hash's fields and values}, or false.
local id = ARGV[3]
if ARGV[2] == 'name' then id = redis.call('HGET', P .. 'keynames', ARGV[3])
elseif ARGV[2] == 'digest' then id = redis.call('HGET', P .. 'keydigests', ARGV[3]) end
if not id then return false end
local h = redis.call('HGETALL', P .. 'key:' .. id)
if #h == 0 then return false end
return {id, h}
