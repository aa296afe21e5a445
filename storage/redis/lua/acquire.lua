-- acquire / find. ARGV: 2 mode ('acquire' or 'find'), 3 pool name,
-- 4 consumer id, 5 unused, 6 lease id, 7 duration (us), 8 strategy,
-- 9 session key, 10 session ttl (us), 11 filter spec JSON or '', 12 seed,
-- 13 '1' when the client already knows the consumer exists, 14 the pool id
-- the client last saw for this name, or '', 15 the lease's who field (see
-- LEASES in lib.lua), 16 the target (normalized; '' for none: see COOL in
-- select.lua). Returns {pool id, acquisition time, expiry, proxy
-- id, its lease count, its DYN fields}, or lease_again's reply (see
-- lib.lua) when the lease id has a record already. The consumer's and the
-- pool's quotas are applied before a proxy is chosen (see quota.lua): a
-- refusal is an error reply (see refusal), and takes nothing.
local mode, pname, strategy, skey = ARGV[2], ARGV[3], ARGV[8], ARGV[9]
local acquire = mode == 'acquire'
if acquire then
  local v = redis.call('HGET', LEASES, ARGV[6])
  if v then
    local r, code = lease_again(ARGV[6], v, pname, ARGV[4])
    if not r then return redis.error_reply(code) end
    return r
  end
end
if acquire and ARGV[13] ~= '1' and redis.call('SISMEMBER', P .. 'cids', ARGV[4]) == 0 then
  return redis.error_reply('PHAROX_CONSUMER_NOT_FOUND')
end
local now = now_us()
local spec = nil
if ARGV[11] ~= '' then
  spec = cjson.decode(ARGV[11])
  math.randomseed(tonumber(ARGV[12]))
end

-- gate holds what choose read of the quotas: the consumer's (c) and the
-- pool's (p) quota records, parsed, when they exist.
local gate = {}
local function choose(pid)
  reclaim(pid, now, RECLAIM)
  -- One read tells whether the consumer or the pool has a quota and the
  -- pool has proxies whose allowance is exhausted.
  local cid = ''
  if acquire then cid = ARGV[4] end
  local qs = redis.call('HMGET', QUOTAS, 'consumer|' .. cid, 'pool|' .. pid, 'x|' .. pid)
  gate = {}
  if acquire and qs[1] then
    gate.c = qparse(qs[1])
    local n = 0
    if gate.c.mcl > 0 then n = active_in(cact(cid), now) end
    local refused = admit(gate.c, 'consumer', cid, n, now)
    if refused then return nil, false, false, refused end
  end
  if acquire and qs[2] then
    gate.p = qparse(qs[2])
    local n = 0
    if gate.p.mcl > 0 then n = active_in(pk(pid, 'exp'), now) end
    local refused = admit(gate.p, 'pool', pid, n, now)
    if refused then return nil, false, false, refused end
  end
  use_target(pid, ARGV[16], now, qs[3])
  if acquire and skey ~= '' then
    local b = redis.call('HGET', pk(pid, 'sess'), skey)
    if b then
      local sep = string.find(b, '|', 1, true)
      local bid, bexp = string.sub(b, 1, sep - 1), tonumber(string.sub(b, sep + 1))
      if bexp > now then
        local keys = {}
        if spec then
          for i, s in ipairs(spec.k or {}) do keys[i] = pk(pid, s) end
        end
        if is_candidate(pid, bid, keys, spec and spec.e) then return bid, true end
      end
    end
  end
  local cursor = nil
  if strategy == 'round_robin' then cursor = redis.call('GET', pk(pid, 'rr')) end
  local id, gave_up = select_proxy(pid, strategy, cursor, spec)
  return id, false, gave_up
end

-- The client's pool id saves a lookup; it is checked when nothing is
-- found, since a pool deleted and re-created under its name has a new id
-- (and the old id's keys are gone).
local pid = ARGV[14]
local chosen, sticky, gave_up, refused = nil, false, false, nil
if pid ~= '' then chosen, sticky, gave_up, refused = choose(pid) end
if not chosen and not refused then
  local real = redis.call('HGET', P .. 'pools', pname)
  if not real then return redis.error_reply('PHAROX_POOL_NOT_FOUND') end
  if real ~= pid then
    pid = real
    chosen, sticky, gave_up, refused = choose(pid)
  end
end
if refused then return redis.error_reply(refused) end
if gave_up then return redis.error_reply('PHAROX_TOO_SELECTIVE') end
if not chosen then return false end
if not acquire then return redis.call('HGETALL', xk(chosen)) end

local cur, f = take_slot(pid, chosen)
local lid = ARGV[6]
local exp = now + tonumber(ARGV[7])
-- A consumer with a max_concurrent_leases quota counts the lease in its
-- set of active leases; quotas with a request rate lose a token.
local q = ''
if gate.c or gate.p then
  local taken = {}
  if gate.c then
    if gate.c.mcl > 0 then
      q = ARGV[4]
      redis.call('ZADD', cact(ARGV[4]), fmt(exp), lid)
    end
    if take(gate.c, now) then taken[#taken + 1] = 'consumer|' .. ARGV[4] taken[#taken + 1] = qformat(gate.c) end
  end
  if gate.p and take(gate.p, now) then taken[#taken + 1] = 'pool|' .. pid taken[#taken + 1] = qformat(gate.p) end
  if #taken > 0 then redis.call('HSET', QUOTAS, unpack(taken)) end
end
lease_write(lid, lease_record(chosen, pid, fmt(now), fmt(exp), f[10], q, ARGV[15]))
redis.call('ZADD', pk(pid, 'exp'), fmt(exp), lid)
-- The round-robin position moves only when the strategy chose.
if strategy == 'round_robin' and not sticky then redis.call('SET', pk(pid, 'rr'), chosen) end
if skey ~= '' then
  local sexp = fmt(now + tonumber(ARGV[10]))
  redis.call('HSET', pk(pid, 'sess'), skey, chosen .. '|' .. sexp)
  redis.call('ZADD', pk(pid, 'sessexp'), sexp, skey)
end
return {pid, fmt(now), fmt(exp), chosen, cur, f}
