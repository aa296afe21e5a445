-- create api key. ARGV: 2 id, 3 name, 4 digest (hex), 5 created (us) or ''
-- for now, 6 the call's token (see once in lib.lua), then the key's other
-- fields as field, value pairs. Returns created (us). The name, digest and
-- id lookups are written together here, so two keys can never share a
-- name or a digest, whichever processes create them.
local prior = once(ARGV[6])
if prior then return prior end
local id, name, dg = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HEXISTS', P .. 'keynames', name) == 1 then
  return redis.error_reply('PHAROX_ALREADY_EXISTS key name')
end
if redis.call('HEXISTS', P .. 'keydigests', dg) == 1 then
  return redis.error_reply('PHAROX_ALREADY_EXISTS key digest')
end
if redis.call('EXISTS', P .. 'key:' .. id) == 1 then
  return redis.error_reply('PHAROX_ALREADY_EXISTS key id')
end
local created = ARGV[5]
if created == '' then created = fmt(now_us()) end
local args = {'name', name, 'dg', dg, 'created', created}
for i = 7, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', P .. 'key:' .. id, unpack(args))
redis.call('HSET', P .. 'keynames', name, id)
redis.call('HSET', P .. 'keydigests', dg, id)
redis.call('ZADD', P .. 'keys', '0', name)
return done(ARGV[6], created)
