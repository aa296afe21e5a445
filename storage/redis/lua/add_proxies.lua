-- add proxies, all or none. ARGV: 2 JSON array of
-- {id, pool, uniq, f: [field, value, ...], idx: [suffix...], geo: {lat, lon, polar},
-- ff: the fields filters read, packed (see proxy_fields in select.lua)}.
-- ARGV 3 is the call's token (see once in lib.lua).
local prior = once(ARGV[3])
if prior then return prior end
local list = cjson.decode(ARGV[2])
for _, p in ipairs(list) do
  if redis.call('EXISTS', P .. 'pool:' .. p.pool) == 0 then
    return redis.error_reply('PHAROX_POOL_NOT_FOUND ' .. p.pool)
  end
  if redis.call('EXISTS', xk(p.id)) == 1 then
    return redis.error_reply('PHAROX_ALREADY_EXISTS proxy id ' .. p.id)
  end
  if redis.call('HEXISTS', pk(p.pool, 'uniq'), p.uniq) == 1 then
    return redis.error_reply('PHAROX_ALREADY_EXISTS proxy ' .. p.id)
  end
end
local now = fmt(now_us())
for _, p in ipairs(list) do
  local k = xk(p.id)
  redis.call('HSET', k, unpack(p.f))
  redis.call('HSET', k, 'id', p.id, 'pool', p.pool, 'uniq', p.uniq, 'idx', cjson.encode(p.idx),
    'cur', 0, 'streak', 0, 'created', now)
  redis.call('HSET', pk(p.pool, 'uniq'), p.uniq, p.id)
  redis.call('ZADD', pk(p.pool, 'all'), 0, p.id)
  local st = redis.call('HGET', k, 'status')
  local maxc = redis.call('HGET', k, 'maxc')
  redis.call('HINCRBY', pk(p.pool, 'cnt'), st, 1)
  index_proxy(p.pool, p.id, p.idx, p.geo, p.ff)
  sync_free(p.pool, p.id, st, 0, maxc, '')
end
return done(ARGV[3], now)
