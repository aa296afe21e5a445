-- Proxy add/remove helpers for admin scripts.
local function index_proxy(pid, id, idx, geo, ff)
  for _, s in ipairs(idx) do redis.call('SADD', pk(pid, s), id) end
  redis.call('HSET', pk(pid, 'ff'), id, ff)
  if geo then
    if geo.polar then redis.call('SADD', pk(pid, 'polar'), id)
    else redis.call('GEOADD', pk(pid, 'geo'), geo.lon, geo.lat, id) end
  end
end

-- remove_proxy deletes a proxy, its indexes, its ended leases and its
-- quota.
local function remove_proxy(pid, id)
  redis.call('HDEL', QUOTAS, 'proxy|' .. id)
  if redis.call('ZREM', pk(pid, 'xh'), id) == 1 and redis.call('ZCARD', pk(pid, 'xh')) == 0 then
    redis.call('HDEL', QUOTAS, 'x|' .. pid)
  end
  local k = xk(id)
  local f = redis.call('HMGET', k, 'status', 'uniq', 'idx')
  for _, lid in ipairs(redis.call('SMEMBERS', k .. ':ended')) do
    redis.call('HDEL', LEASES, lid)
    redis.call('HDEL', P .. 'verdicts', lid)
    redis.call('ZREM', P .. 'ended', lid)
  end
  redis.call('DEL', k .. ':ended')
  drop_targets(pid, id)
  if not blank(f[3]) then
    for _, s in ipairs(cjson.decode(f[3])) do redis.call('SREM', pk(pid, s), id) end
  end
  redis.call('HDEL', pk(pid, 'ff'), id)
  redis.call('ZREM', pk(pid, 'geo'), id)
  redis.call('SREM', pk(pid, 'polar'), id)
  sync_free(pid, id, 'banned', 0, '', '')
  redis.call('ZREM', pk(pid, 'all'), id)
  redis.call('HDEL', pk(pid, 'uniq'), f[2])
  redis.call('HINCRBY', pk(pid, 'cnt'), f[1], -1)
  redis.call('DEL', k)
end
