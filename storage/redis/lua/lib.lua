-- Shared prelude of every pharox script (see doc.go for the key layout).
-- ARGV[1] is the key prefix; KEYS[1] is prefix.."pools", declared so that
-- clients route the script to the node holding the prefix's slot.
local P = ARGV[1]
-- Tuning of candidate selection (see select_proxy).
local CHUNK = 64        -- members tested per round trip into a sorted set
local WALK = 256        -- members walked in strategy order before switching to set algebra
local SET_DIRECT = 128  -- index sets this small are intersected at once
local SCAN = 1024       -- at most this many candidates are read from index sets, or walked, per call
local RECLAIM = 256     -- expired leases reclaimed per hot-path call
local W = 4294967296    -- status-rank weight in the least_used score
local RANK = {active = 0, slow = 1, inactive = 2, banned = 3}

-- fmt formats an integral number exactly (Lua's own conversion rounds
-- to 14 digits); it remembers its last result, since scripts format the
-- same time many times. Numbers passed to redis.call are formatted by
-- Redis with %.17g, which costs more than passing strings: hot calls pass
-- string constants or fmt's output.
local fmt_n, fmt_s = nil, nil
local function fmt(n)
  if n ~= fmt_n then fmt_n, fmt_s = n, string.format('%d', n) end
  return fmt_s
end
-- FA names the first_available free lists by status rank.
local FA = {[0] = 'fa:0', [1] = 'fa:1'}
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- pk names a key of pool pid; the names are kept, since the hot path
-- builds the same few many times.
local pkeys = {}
local function pk(pid, s)
  local t = pkeys[pid]
  if not t then t = {} pkeys[pid] = t end
  local k = t[s]
  if not k then k = P .. 'p:' .. pid .. ':' .. s t[s] = k end
  return k
end
local function xk(id) return P .. 'proxy:' .. id end
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
    redis.call('ZADD', pk(pid, 'free'), '0', id)
    redis.call('ZADD', pk(pid, FA[r]), fa_score(chk), id)
    redis.call('ZREM', pk(pid, FA[1 - r]), id)
    redis.call('ZADD', pk(pid, 'lu'), fmt(r * W + cur), id)
  else
    redis.call('ZREM', pk(pid, 'free'), id)
    redis.call('ZREM', pk(pid, 'fa:0'), id)
    redis.call('ZREM', pk(pid, 'fa:1'), id)
    redis.call('ZREM', pk(pid, 'lu'), id)
  end
end

-- Deferred writes: batch scripts gather the writes of many items that
-- nothing later in the script reads and make them at the end, in flush,
-- with one call per key (and field, for counters; per proxy, for freed
-- slots). d.ops[op][key] lists the arguments of set and sorted-set
-- additions and removals; d.incr[key][field] sums hash counter
-- increments; d.freed[proxy id] counts the slots end_lease frees on a
-- proxy (see free_slots); d.last[key][member] is the final score of a
-- member of a free structure (false: removed) for the structures not in
-- d.live, the set of those the script's selection reads (see take_slot).
local function new_deferred() return {ops = {}, incr = {}, freed = {}, last = {}} end

-- defer adds a (and b, when given) to the arguments of op on key.
local function defer(d, op, key, a, b)
  local byop = d.ops[op]
  if not byop then byop = {} d.ops[op] = byop end
  local args = byop[key]
  if not args then args = {} byop[key] = args end
  args[#args + 1] = a
  if b ~= nil then args[#args + 1] = b end
end

-- incr adds n to a hash counter, at once without d.
local function incr(d, key, field, n)
  if not d then return redis.call('HINCRBY', key, field, fmt(n)) end
  local byfield = d.incr[key]
  if not byfield then byfield = {} d.incr[key] = byfield end
  byfield[field] = (byfield[field] or 0) + n
end

-- zset_write sets (score) or removes (score nil) a proxy in one of the
-- pool's free structures, named by suffix; with d, only the final state
-- is written, at flush, unless d.live names the structure.
local function zset_write(d, pid, suffix, id, score)
  local key = pk(pid, suffix)
  if d and d.live and not d.live[suffix] then
    local byk = d.last[key]
    if not byk then byk = {} d.last[key] = byk end
    byk[id] = score or false
  elseif score then
    redis.call('ZADD', key, score, id)
  else
    redis.call('ZREM', key, id)
  end
end

-- DYN lists the proxy fields an acquisition returns: the packed static
-- part and the fields that change after creation (cur is returned apart).
local DYN = {'static', 'status', 'chk', 'latms', 'err', 'code', 'streak', 'chg', 'created', 'maxc'}

-- take_slot counts one more lease on a proxy chosen from the free
-- structures and returns its new load and DYN fields. f, when given, is
-- the proxy's DYN fields read earlier in the same script (taking a slot
-- changes none of them); d, when given, defers the pool's counter and
-- the free structures outside d.live.
local function take_slot(pid, id, f, d)
  local k = xk(id)
  local cur = redis.call('HINCRBY', k, 'cur', '1')
  f = f or redis.call('HMGET', k, unpack(DYN))
  if cur == 1 then incr(d, pk(pid, 'cnt'), 'leased', 1) end
  local r = RANK[f[2]]
  if has_room(cur, f[10]) then
    zset_write(d, pid, 'lu', id, fmt(r * W + cur))
  else
    zset_write(d, pid, 'free', id)
    zset_write(d, pid, FA[r], id)
    zset_write(d, pid, 'lu', id)
  end
  return cur, f
end

-- free_slots counts n leases less on a proxy; maxc is its MaxConcurrency
-- (fixed at creation, so leases carry it). It leaves the proxy as n frees
-- of one slot would: only the first can find it full, and the others
-- lower its least_used score. With d, the pool's counter and the sorted
-- set additions are deferred.
local function free_slots(pid, id, maxc, n, d)
  local k = xk(id)
  local cur = redis.call('HINCRBY', k, 'cur', fmt(-n))
  if cur == 0 then incr(d, pk(pid, 'cnt'), 'leased', -1) end
  if not blank(maxc) and cur + n >= tonumber(maxc) then
    -- It was full, so it is in no free structure: it rejoins if leasable.
    local f = redis.call('HMGET', k, 'status', 'chk')
    if leasable(f[1]) then
      local r = RANK[f[1]]
      local zadd = redis.call
      if d then zadd = function(op, key, score, member) defer(d, op, key, score, member) end end
      zadd('ZADD', pk(pid, 'free'), '0', id)
      zadd('ZADD', pk(pid, FA[r]), fa_score(f[2]), id)
      zadd('ZADD', pk(pid, 'lu'), fmt(r * W + cur), id)
    end
  else
    -- A free leasable proxy is in lu: its score drops (XX: a proxy that
    -- is not leasable stays out).
    redis.call('ZADD', pk(pid, 'lu'), 'XX', 'INCR', fmt(-n), id)
  end
end

-- flush makes d's writes and empties it. No member has an addition and a
-- removal pending on one key (d.last keeps one final state per member, and
-- the other deferred writes go to keys of their own), so their order does
-- not matter.
local function flush(d)
  for id, e in pairs(d.freed) do free_slots(e.pid, id, e.maxc, e.n, d) end
  for key, byk in pairs(d.last) do
    for id, score in pairs(byk) do
      if score then defer(d, 'ZADD', key, score, id)
      else defer(d, 'ZREM', key, id) end
    end
  end
  for op, byop in pairs(d.ops) do
    for key, args in pairs(byop) do
      -- unpack is bounded by Lua's stack: write in parts (of whole
      -- score-member pairs).
      for i = 1, #args, 512 do
        redis.call(op, key, unpack(args, i, math.min(i + 511, #args)))
      end
    end
  end
  for key, byfield in pairs(d.incr) do
    for field, n in pairs(byfield) do
      if n ~= 0 then redis.call('HINCRBY', key, field, fmt(n)) end
    end
  end
  d.ops, d.incr, d.freed, d.last = {}, {}, {}, {}
end

-- Leases live in one hash, LEASES: lease id -> its record,
-- "status|rel|exp|proxy|pool|maxc|q|acq|who", where rel is '' while the
-- lease is active, q is the consumer's id when the lease counts in the
-- consumer's set of active leases (CACT: the consumer had a
-- max_concurrent_leases quota when the lease began, or when SetQuota gave
-- it one; the id saves ending the lease a parse of who) and '' otherwise,
-- and who
-- (the consumer id, then the target, consumer name, pool name and session
-- key, packed by the client: see encodeWho in codec.go) is read here only
-- for the consumer id and the target. One hash lets a batch read and write
-- all its leases in one call each, and a record is one value to copy
-- rather than a field per attribute.
local LEASES = P .. 'leases'
-- QUOTAS holds the quotas (see quota.lua); lib's scripts only delete from it.
local QUOTAS = P .. 'quotas'
local ACTIVE = 'active|' -- an active record starts with it, then rel's ''

-- CACT names a consumer's sorted set of active leases by ExpiresAt: kept
-- only for the leases whose q is set (see quota.lua). Batches name the
-- same few many times: the names are kept.
local cacts = {}
local function cact(cid)
  local k = cacts[cid]
  if not k then k = P .. 'c:' .. cid .. ':act' cacts[cid] = k end
  return k
end

-- lease_record packs a new active lease (acq and exp formatted).
local function lease_record(proxy, pid, acq, exp, maxc, q, who)
  return 'active||' .. exp .. '|' .. proxy .. '|' .. pid .. '|' .. (maxc or '') .. '|' .. q .. '|' .. acq .. '|' .. who
end

-- lease_fields returns a record's status, exp, proxy, pool, maxc and q
-- (plain finds cost a fraction of a pattern match).
local function lease_fields(v)
  local find, sub = string.find, string.sub
  local a = find(v, '|', 1, true)
  local b = find(v, '|', a + 1, true)
  local c = find(v, '|', b + 1, true)
  local d = find(v, '|', c + 1, true)
  local e = find(v, '|', d + 1, true)
  local f = find(v, '|', e + 1, true)
  local g = find(v, '|', f + 1, true)
  return sub(v, 1, a - 1), sub(v, b + 1, c - 1), sub(v, c + 1, d - 1), sub(v, d + 1, e - 1), sub(v, e + 1, f - 1), sub(v, f + 1, g - 1)
end

-- who_at returns where a record's who part starts: after its eighth '|'.
local function who_at(v)
  local at = 0
  for _ = 1, 8 do at = string.find(v, '|', at + 1, true) end
  return at + 1
end

-- lease_consumer returns the consumer id of a record: who's first 36 bytes.
local function lease_consumer(v)
  local w = who_at(v)
  return string.sub(v, w, w + 35)
end

-- lease_target returns the consumer id and the target of a record: the
-- target follows the id in who as its length, ':' and its bytes.
local function lease_target(v)
  local w = who_at(v)
  local c = string.find(v, ':', w + 36, true)
  local n = tonumber(string.sub(v, w + 36, c - 1))
  return string.sub(v, w, w + 35), string.sub(v, c + 1, c + n)
end

-- lease_write sets a lease's record, at once or, with d, at d's flush.
local function lease_write(lid, v, d)
  if d then defer(d, 'HSET', LEASES, lid, v)
  else redis.call('HSET', LEASES, lid, v) end
end

-- end_lease ends the active lease whose record is v as released or
-- expired and frees its slot; proxy, pool, maxc and q are the record's
-- fields, parsed by the caller. tok, given by a release, is kept after
-- rel as ':' .. tok, so that the same release sent again (a client's
-- retry) is recognised (see released_by); use, a release's usage report
-- ("requests,sent,received"), follows it as ':' .. use. It returns the
-- new record. With d, every write is deferred to d (the caller keeps track
-- of leases it ended).
local function end_lease(lid, v, status, now, proxy, pid, maxc, q, d, tok, use)
  local rel = fmt(now)
  if tok then rel = rel .. ':' .. tok end
  if use then rel = rel .. ':' .. use end
  local ended = status .. '|' .. rel .. string.sub(v, #ACTIVE + 1)
  lease_write(lid, ended, d)
  if not d then
    redis.call('ZREM', pk(pid, 'exp'), lid)
    if q ~= '' then redis.call('ZREM', cact(q), lid) end
    redis.call('ZADD', P .. 'ended', fmt(now), lid)
    redis.call('SADD', xk(proxy) .. ':ended', lid)
    free_slots(pid, proxy, maxc, 1)
    return ended
  end
  defer(d, 'ZREM', pk(pid, 'exp'), lid)
  if q ~= '' then defer(d, 'ZREM', cact(q), lid) end
  defer(d, 'ZADD', P .. 'ended', fmt(now), lid)
  defer(d, 'SADD', xk(proxy) .. ':ended', lid)
  local e = d.freed[proxy]
  if not e then
    e = {pid = pid, maxc = maxc, n = 0}
    d.freed[proxy] = e
  end
  e.n = e.n + 1
  return ended
end

-- released_by reports whether the record v was released by the release
-- call that carried tok.
local function released_by(v, tok)
  local find = string.find
  local a = find(v, '|', 1, true)
  if string.sub(v, 1, a - 1) ~= 'released' then return false end
  local b = find(v, '|', a + 1, true)
  local c = find(v, ':', a + 1, true)
  if c == nil or c > b then return false end
  local e = find(v, ':', c + 1, true) -- a usage report follows the token
  if e == nil or e > b then e = b end
  return string.sub(v, c + 1, e - 1) == tok
end

-- lease_again answers an acquisition whose lease id already has the record
-- v: the acquisition was applied before (a client's retry, or a caller's
-- own LeaseID used again), so it takes nothing and returns the lease as it
-- is now (ended first if it has expired): {record, the proxy's lease
-- count, its DYN fields} (count and fields false when the proxy is gone).
-- An id taken by another consumer or in another pool returns nil and the
-- error code.
local function lease_again(lid, v, pname, cid)
  local st, exp, proxy, pid, maxc, q = lease_fields(v)
  if lease_consumer(v) ~= cid or redis.call('HGET', P .. 'pools', pname) ~= pid then
    return nil, 'PHAROX_ALREADY_EXISTS lease id'
  end
  if st == 'active' then
    local now = now_us()
    if tonumber(exp) <= now then v = end_lease(lid, v, 'expired', now, proxy, pid, maxc, q) end
  end
  local k = xk(proxy)
  local cur = redis.call('HGET', k, 'cur')
  if not cur then return {v, false, false} end
  return {v, tonumber(cur), redis.call('HMGET', k, unpack(DYN))}
end

-- reclaim ends up to limit of the pool's leases whose ExpiresAt has passed.
local function reclaim(pid, now, limit)
  local ids = redis.call('ZRANGEBYSCORE', pk(pid, 'exp'), '-inf', fmt(now), 'LIMIT', '0', fmt(limit))
  -- unpack is bounded by Lua's stack: read the records in parts.
  for i = 1, #ids, 512 do
    local vals = redis.call('HMGET', LEASES, unpack(ids, i, math.min(i + 511, #ids)))
    for j, v in ipairs(vals) do
      local lid = ids[i + j - 1]
      local st, _, proxy, _, maxc, q
      if v then st, _, proxy, _, maxc, q = lease_fields(v) end
      if st == 'active' then end_lease(lid, v, 'expired', now, proxy, pid, maxc, q)
      else redis.call('ZREM', pk(pid, 'exp'), lid) end -- cannot happen; keeps the set clean
    end
  end
  return #ids
end

-- Administrative writes (create and delete pools, add and delete proxies)
-- carry a token per call. once returns the reply a run with that token
-- already made, or nil; done keeps a reply under its token for ONCE_TTL
-- ms. So the same call sent again (a client's retry) answers as the first
-- did, instead of ErrAlreadyExists or a not-found error for the change it
-- made, while a call of its own, with another token, still gets them.
local ONCE_TTL = '60000'
local function once(tok)
  local v = redis.call('GET', P .. 'once:' .. tok)
  if v then return cjson.decode(v) end
  return nil
end
local function done(tok, reply)
  redis.call('SET', P .. 'once:' .. tok, cjson.encode(reply), 'PX', ONCE_TTL)
  return reply
end

-- delete_lease forgets an ended lease.
local function delete_lease(lid)
  local v = redis.call('HGET', LEASES, lid)
  if v then
    local _, _, proxy = lease_fields(v)
    redis.call('SREM', xk(proxy) .. ':ended', lid)
  end
  redis.call('HDEL', LEASES, lid)
  redis.call('HDEL', P .. 'verdicts', lid)
  redis.call('ZREM', P .. 'ended', lid)
end
