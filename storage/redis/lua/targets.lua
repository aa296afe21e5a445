-- Per (proxy, target) health (see doc.go, Targets). A proxy's entries are
-- the fields of proxy:<id>:t, one packed record per target, written only
-- by target_write.lua; these helpers keep the indexes in step with them.

-- A record is "streak|bans|cool|banned|code|succ|fail|upd|tok|reason":
-- the failure streak, the bans in a row, the cool-down's end and start,
-- the last status code, the last success and failure, the last update
-- (times in us, '' when unset), the token of the call that wrote it, and
-- the last reason (last, as it may hold '|').
local TFIELDS = 9

-- parse_target returns a record's fields (numbers, nil when unset), or
-- an empty entry for false.
local function parse_target(rec)
  local s = {streak = 0, bans = 0, code = '0', upd = nil, reason = '', tok = ''}
  if not rec then return s end
  local f, pos = {}, 1
  for i = 1, TFIELDS do
    local e = string.find(rec, '|', pos, true)
    f[i] = string.sub(rec, pos, e - 1)
    pos = e + 1
  end
  s.streak, s.bans = tonumber(f[1]), tonumber(f[2])
  s.cool, s.banned = tonumber(f[3]), tonumber(f[4])
  s.code, s.succ, s.fail, s.upd = f[5], tonumber(f[6]), tonumber(f[7]), tonumber(f[8])
  s.tok, s.reason = f[9], string.sub(rec, pos)
  return s
end

local function format_target(s)
  local function opt(n) if n then return fmt(n) end return '' end
  return table.concat({fmt(s.streak), fmt(s.bans), opt(s.cool), opt(s.banned), s.code,
    opt(s.succ), opt(s.fail), opt(s.upd), s.tok, s.reason}, '|')
end

-- target_idle mirrors pharox.TargetState.IdleSince: the later of the last
-- update and the cool-down's end (-inf for an empty entry).
local function target_idle(s)
  local idle = s.upd or -math.huge
  if s.cool and s.cool > idle then idle = s.cool end
  return idle
end

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
