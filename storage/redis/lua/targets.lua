-- Per (proxy, target) health (see doc.go, Targets). A proxy's entries are
-- the fields of proxy:<id>:t, one packed record per target, written only
-- by target_write.lua; these helpers keep the indexes in step with them.

-- index_target records an entry's cool-down end and start (us, '' when
-- unset) and the time it went idle (see pharox.TargetState.IdleSince).
local function index_target(pid, id, t, cool, banned, idle)
  local k = xk(id)
  if cool ~= '' then redis.call('ZADD', pk(pid, 'tc:' .. t), cool, id)
  else redis.call('ZREM', pk(pid, 'tc:' .. t), id) end
  if banned ~= '' then
    redis.call('ZADD', pk(pid, 'tb:' .. t), banned, id)
    redis.call('ZADD', k .. ':tb', banned, t)
  else
    redis.call('ZREM', pk(pid, 'tb:' .. t), id)
    redis.call('ZREM', k .. ':tb', t)
  end
  redis.call('ZADD', k .. ':ti', idle, t)
  redis.call('ZADD', P .. 'tidle', idle, id .. '|' .. t)
end

-- drop_target deletes proxy id's entry for target t and its index
-- entries; it returns 1, or 0 when there was none.
local function drop_target(pid, id, t)
  local k = xk(id)
  if redis.call('HDEL', k .. ':t', t) == 0 then return 0 end
  redis.call('ZREM', pk(pid, 'tc:' .. t), id)
  redis.call('ZREM', pk(pid, 'tb:' .. t), id)
  redis.call('ZREM', k .. ':tb', t)
  redis.call('ZREM', k .. ':ti', t)
  redis.call('ZREM', P .. 'tidle', id .. '|' .. t)
  if redis.call('HINCRBY', pk(pid, 'tn'), t, '-1') <= 0 then redis.call('HDEL', pk(pid, 'tn'), t) end
  return 1
end

-- drop_targets deletes every entry of proxy id.
local function drop_targets(pid, id)
  for _, t in ipairs(redis.call('HKEYS', xk(id) .. ':t')) do drop_target(pid, id, t) end
end
