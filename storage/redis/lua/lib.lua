-- Shared prelude of every pharox script (see doc.go for the key layout).
-- ARGV[1] is the key prefix; KEYS[1] is prefix.."pools", declared so that
-- clients route the script to the node holding the prefix's slot.
local P = ARGV[1]
-- Tuning of candidate selection (see select_proxy).
local CHUNK = 64        -- members tested per round trip into a sorted set
local WALK = 256        -- members walked in strategy order before switching to set algebra
local SET_DIRECT = 128  -- index sets this small are intersected at once
local RECLAIM = 256     -- expired leases reclaimed per hot-path call
local W = 4294967296    -- status-rank weight in the least_used score
local RANK = {active = 0, slow = 1, inactive = 2, banned = 3}

local function fmt(n) return string.format('%.0f', n) end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function pk(pid, s) return P .. 'p:' .. pid .. ':' .. s end
local function xk(id) return P .. 'proxy:' .. id end
local function lk(id) return P .. 'lease:' .. id end
local function blank(v) return v == nil or v == false or v == '' end
local function leasable(st) return st == 'active' or st == 'slow' end
local function has_room(cur, maxc) return blank(maxc) or cur < tonumber(maxc) end
local function fa_score(chk)
  if blank(chk) then return 'inf' end
  return fmt(-tonumber(chk))
end

-- sync_free makes the proxy's membership of the pool's free structures
-- (free, fa:<rank>, lu) match its status and load.
local function sync_free(pid, id, st, cur, maxc, chk)
  if leasable(st) and has_room(cur, maxc) then
    local r = RANK[st]
    redis.call('ZADD', pk(pid, 'free'), 0, id)
    redis.call('ZADD', pk(pid, 'fa:' .. r), fa_score(chk), id)
    redis.call('ZREM', pk(pid, 'fa:' .. (1 - r)), id)
    redis.call('ZADD', pk(pid, 'lu'), fmt(r * W + cur), id)
  else
    redis.call('ZREM', pk(pid, 'free'), id)
    redis.call('ZREM', pk(pid, 'fa:0'), id)
    redis.call('ZREM', pk(pid, 'fa:1'), id)
    redis.call('ZREM', pk(pid, 'lu'), id)
  end
end

-- DYN lists the proxy fields an acquisition returns: the packed static
-- part and the fields that change after creation (cur is returned apart).
local DYN = {'static', 'status', 'chk', 'latms', 'err', 'code', 'streak', 'chg', 'created', 'maxc'}

-- take_slot counts one more lease on a proxy chosen from the free
-- structures and returns its new load and DYN fields.
local function take_slot(pid, id)
  local k = xk(id)
  local cur = redis.call('HINCRBY', k, 'cur', 1)
  local f = redis.call('HMGET', k, unpack(DYN))
  if cur == 1 then redis.call('HINCRBY', pk(pid, 'cnt'), 'leased', 1) end
  local r = RANK[f[2]]
  if has_room(cur, f[10]) then
    redis.call('ZADD', pk(pid, 'lu'), fmt(r * W + cur), id)
  else
    redis.call('ZREM', pk(pid, 'free'), id)
    redis.call('ZREM', pk(pid, 'fa:' .. r), id)
    redis.call('ZREM', pk(pid, 'lu'), id)
  end
  return cur, f
end

-- free_slot counts one lease less on a proxy; maxc is its MaxConcurrency
-- (fixed at creation, so leases carry it).
local function free_slot(pid, id, maxc)
  local k = xk(id)
  local cur = redis.call('HINCRBY', k, 'cur', -1)
  if cur == 0 then redis.call('HINCRBY', pk(pid, 'cnt'), 'leased', -1) end
  if not blank(maxc) and cur + 1 >= tonumber(maxc) then
    -- It was full, so it is in no free structure: it rejoins if leasable.
    local f = redis.call('HMGET', k, 'status', 'chk')
    if leasable(f[1]) then
      local r = RANK[f[1]]
      redis.call('ZADD', pk(pid, 'free'), 0, id)
      redis.call('ZADD', pk(pid, 'fa:' .. r), fa_score(f[2]), id)
      redis.call('ZADD', pk(pid, 'lu'), fmt(r * W + cur), id)
    end
  else
    -- A free leasable proxy is in lu: its score drops by one (XX: a
    -- proxy that is not leasable stays out).
    redis.call('ZADD', pk(pid, 'lu'), 'XX', 'INCR', -1, id)
  end
end

-- end_lease ends an active lease as released or expired and frees its
-- slot; proxy, pool and maxc are the lease's fields, read by the caller.
local function end_lease(lid, status, now, proxy, pid, maxc)
  redis.call('HSET', lk(lid), 'status', status, 'rel', fmt(now))
  redis.call('ZREM', pk(pid, 'exp'), lid)
  redis.call('ZADD', P .. 'ended', fmt(now), lid)
  redis.call('SADD', xk(proxy) .. ':ended', lid)
  free_slot(pid, proxy, maxc)
end

-- reclaim ends up to limit of the pool's leases whose ExpiresAt has passed.
local function reclaim(pid, now, limit)
  local ids = redis.call('ZRANGEBYSCORE', pk(pid, 'exp'), '-inf', fmt(now), 'LIMIT', 0, limit)
  for _, lid in ipairs(ids) do
    local f = redis.call('HMGET', lk(lid), 'status', 'proxy', 'maxc')
    if f[1] == 'active' then end_lease(lid, 'expired', now, f[2], pid, f[3])
    else redis.call('ZREM', pk(pid, 'exp'), lid) end -- cannot happen; keeps the set clean
  end
  return #ids
end

-- delete_lease forgets an ended lease.
local function delete_lease(lid)
  local proxy = redis.call('HGET', lk(lid), 'proxy')
  if proxy then redis.call('SREM', xk(proxy) .. ':ended', lid) end
  redis.call('DEL', lk(lid))
  redis.call('ZREM', P .. 'ended', lid)
end
