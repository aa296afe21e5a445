-- acquire_many: the acquisitions of one batch, each exactly as acquire.lua
-- in mode 'acquire' without a session key, one after another, so the
-- outcome equals that many acquire.lua calls in a row at one instant.
-- ARGV: 2 pool name, 3 strategy, 4 filter spec JSON or '', 5 the pool id
-- the client last saw for this name, or '', 6 the target (normalized;
-- '' for none: see COOL in select.lua), then 6 values per
-- acquisition: consumer id, lease id, duration (us), seed, '1' when the
-- client already knows the consumer exists, the lease's who field.
-- Returns {pool id, acquisition time} ('' for both when nothing was
-- acquired), then one entry per acquisition: {expiry, proxy id, the
-- proxy's lease count, its DYN fields (false when an earlier entry of the
-- reply holds them), and, only if it differs from the first value, the
-- pool id}; lease_again's reply (see lib.lua) when the lease id has a
-- record already; false when no proxy is free; or the code of
-- acquire.lua's error as a string (PHAROX_TOO_SELECTIVE when the
-- selection gave up, a quota's refusal: see quota.lua).
local pname, strategy, target = ARGV[2], ARGV[3], ARGV[6]
local spec = nil
if ARGV[4] ~= '' then spec = cjson.decode(ARGV[4]) end
local now = nil
-- Writes nothing in the batch reads are gathered in d and made once (see
-- new_deferred in lib.lua): the new leases' records and expiries, the pool's counter
-- of leased proxies, and the free structures the selection does not read
-- (select.lua reads free for every filter that is not a pure conjunction
-- of index sets).
local d = new_deferred()
-- Unfiltered first_available takes the head of fa:0 (else fa:1), and an
-- acquisition removes nothing from them but that head, when it fills; so
-- the heads are read a part at a time and followed here (see fa_head), and
-- no free structure is read while the batch runs. With a target, the heads
-- cooling down for it are skipped (they stay in the list).
local fa_fast = strategy == 'first_available' and not spec
if fa_fast then d.live = {}
elseif strategy == 'first_available' then d.live = {['fa:0'] = true, ['fa:1'] = true}
elseif strategy == 'least_used' then d.live = {lu = true}
else d.live = {free = true} end
if spec then d.live.free = true end

-- heads[pid] = {r = rank of the list, ids = its first members, i = the
-- current head's index in ids}. A read takes no more members than the
-- batch can fill (at least one slot each) plus one.
local heads = {}
-- skip counts the members of the list skipped as cooling down for the
-- target, cool[i] whether ids[i] is.
local span = math.min(CHUNK, (#ARGV - 6) / 6 + 1)
local function read_head(pid, h)
  h.ids = redis.call('ZRANGE', pk(pid, FA[h.r]), fmt(h.skip), fmt(h.skip + span - 1))
  h.i, h.cool = 1, {}
  if COOL then h.cool = cool_flags(h.ids) end
end
local function fa_head(pid)
  local h = heads[pid]
  if not h then
    h = {r = 0, skip = 0}
    read_head(pid, h)
    heads[pid] = h
  end
  while true do
    while h.i > #h.ids do
      if #h.ids < span then
        if h.r == 1 then return nil end
        h.r, h.skip = 1, 0
      end
      -- The members passed are removed at the flush, but for those
      -- skipped: the list then starts with them and the current head.
      flush(d)
      read_head(pid, h)
    end
    if not h.cool[h.i] then return h.ids[h.i] end
    h.skip, h.i = h.skip + 1, h.i + 1
  end
end

-- A later reclaim at the same now finds nothing more once one has ended
-- fewer than RECLAIM leases, so a pool is reclaimed once unless there was
-- a backlog. (Only a lease shorter than a microsecond, due at now, could
-- join it meanwhile, hence the flush.) The round-robin position is kept
-- here and written once at the end.
local drained, cursors, moved, cools = {}, {}, {}, {}
-- selective records that the selection gave up (see select_proxy).
local selective = false

-- Quotas (see quota.lua): qc['consumer|<id>'] and qc['pool|<id>'] are
-- the parsed quota records (false: none), read with the first pool's
-- fields in one HMGET for every consumer of the batch; xs[pid] is the
-- pool's 'x|' field. counts[key] is the number of active unexpired
-- leases in a consumer's or pool's set, read once (after the deferred
-- writes) and then kept by the batch itself; dirty holds the records
-- whose tokens the batch took, written once at the end.
local qc, xs, counts, dirty = {}, {}, {}, {}
-- cfield and pfield name a consumer's and a pool's quota, once each.
local cfields, pfields = {}, {}
local function cfield(cid)
  local f = cfields[cid]
  if not f then f = 'consumer|' .. cid cfields[cid] = f end
  return f
end
local function pfield(pid)
  local f = pfields[pid]
  if not f then f = 'pool|' .. pid pfields[pid] = f end
  return f
end
local function load_quotas(pid)
  local fields = {pfield(pid), 'x|' .. pid}
  for i = 7, #ARGV, 6 do
    local f = cfield(ARGV[i])
    if qc[f] == nil then
      qc[f] = false
      fields[#fields + 1] = f
    end
  end
  local vals = {}
  for i = 1, #fields, 512 do
    local part = redis.call('HMGET', QUOTAS, unpack(fields, i, math.min(i + 511, #fields)))
    for j = 1, #part do vals[i + j - 1] = part[j] end
  end
  xs[pid] = vals[2]
  qc[fields[1]] = vals[1] and qparse(vals[1])
  for i = 3, #fields do qc[fields[i]] = vals[i] and qparse(vals[i]) end
end
local function count(key)
  local n = counts[key]
  if n == nil then
    flush(d)
    n = active_in(key, now)
    counts[key] = n
  end
  return n
end
-- admit_item applies the consumer's, then the pool's quota; nil or a
-- refusal.
local function admit_item(pid, cid)
  local c = qc[cfield(cid)]
  if c then
    local n = 0
    if c.mcl > 0 then n = count(cact(cid)) end
    local r = admit(c, 'consumer', cid, n, now)
    if r then return r end
  end
  local p = qc[pfield(pid)]
  if p then
    local n = 0
    if p.mcl > 0 then n = count(pk(pid, 'exp')) end
    return admit(p, 'pool', pid, n, now)
  end
  return nil
end
-- took counts lease lid (expiring at exp) of consumer cid in pool pid
-- against their quotas, and returns the lease's q (see LEASES in lib.lua).
local function took(pid, cid, lid, exp)
  local q = ''
  local f = cfield(cid)
  local c = qc[f]
  if c then
    if c.mcl > 0 then
      q = cid
      local k = cact(cid)
      defer(d, 'ZADD', k, exp, lid)
      if counts[k] then counts[k] = counts[k] + 1 end
    end
    if take(c, now) then dirty[f] = c end
  end
  f = pfield(pid)
  local p = qc[f]
  if p then
    local k = pk(pid, 'exp')
    if counts[k] then counts[k] = counts[k] + 1 end
    if take(p, now) then dirty[f] = p end
  end
  return q
end

local function choose(pid, cid)
  if not drained[pid] then
    flush(d)
    drained[pid] = reclaim(pid, now, RECLAIM) < RECLAIM
    heads[pid] = nil
  end
  if xs[pid] == nil then load_quotas(pid) end
  local refused = admit_item(pid, cid)
  if refused then return nil, refused end
  if cools[pid] == nil then
    use_target(pid, target, now, xs[pid])
    cools[pid] = COOL or false
  end
  COOL = cools[pid] or nil
  if fa_fast then return fa_head(pid) end
  local cursor = nil
  if strategy == 'round_robin' then
    if cursors[pid] == nil then cursors[pid] = redis.call('GET', pk(pid, 'rr')) end
    cursor = cursors[pid]
  end
  local id, gave_up = select_proxy(pid, strategy, cursor, spec)
  if gave_up then selective = true end
  return id
end

-- pid is the pool id to try; checked once it has been compared with the
-- pools hash (which nothing here changes), missing once the name is known
-- to be unused. empty records that the pool had nothing for this filter:
-- acquisitions only fill slots, so nothing frees up for later items. A
-- quota's refusal is returned as the second value.
local pid, checked, missing, empty = ARGV[5], false, false, false
local function pick(cid)
  local chosen, refused = nil, nil
  if pid ~= '' then chosen, refused = choose(pid, cid) end
  if chosen or refused or checked then return chosen, refused end
  local real = redis.call('HGET', P .. 'pools', pname)
  checked = true
  if not real then missing = true return nil end
  if real ~= pid then
    pid = real
    chosen, refused = choose(pid, cid)
  end
  return chosen, refused
end

-- dyn caches the DYN fields of proxies taken from (see take_slot); from
-- records the pool of each entry that acquired.
local known, dyn, from = {}, {}, {}
-- All items share now, so acq and each duration's expiry are formatted once.
local acq, exps = nil, {}
local out = {false}
-- prior holds the records the batch's lease ids have already (a retried
-- batch, or LeaseIDs used again); made, the item of this batch that took
-- each lease id, and its consumer.
local lids = {}
for i = 8, #ARGV, 6 do lids[#lids + 1] = ARGV[i] end
local prior = redis.call('HMGET', LEASES, unpack(lids))
local made = {}
for i = 7, #ARGV, 6 do
  local cid, lid, dur, seed = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local r = false
  local again, twin = prior[(i - 7) / 6 + 1], made[lid]
  if not again and not twin and ARGV[i + 4] ~= '1' and known[cid] == nil then
    known[cid] = redis.call('SISMEMBER', P .. 'cids', cid) == 1
  end
  if again then
    -- lease_again may end an expired lease, writing at once: the batch's
    -- deferred writes go first, and the heads are read again.
    flush(d)
    heads = {}
    local code
    r, code = lease_again(lid, again, pname, cid)
    if not r then r = code end
  elseif twin then
    -- An earlier item of this batch took the lease: the same answer.
    if twin.cid == cid then r = out[twin.j]
    else r = 'PHAROX_ALREADY_EXISTS lease id' end
  elseif ARGV[i + 4] ~= '1' and not known[cid] then
    r = 'PHAROX_CONSUMER_NOT_FOUND'
  elseif not missing and not empty then
    if not now then now = now_us() acq = fmt(now) end
    if spec then math.randomseed(tonumber(seed)) end
    local chosen, refused = pick(cid)
    if refused then
      r = refused
    elseif chosen then
      local sent = dyn[chosen]
      local cur, f = take_slot(pid, chosen, sent, d)
      dyn[chosen] = f
      if fa_fast and not has_room(cur, f[10]) then heads[pid].i = heads[pid].i + 1 end
      local exp = exps[dur]
      if not exp then exp = fmt(now + tonumber(dur)) exps[dur] = exp end
      local q = took(pid, cid, lid, exp)
      lease_write(lid, lease_record(chosen, pid, acq, exp, f[10], q, ARGV[i + 5]), d)
      defer(d, 'ZADD', pk(pid, 'exp'), exp, lid)
      if strategy == 'round_robin' then cursors[pid], moved[pid] = chosen, true end
      r = {exp, chosen, cur, not sent and f}
      from[#out + 1] = pid
      made[lid] = {cid = cid, j = #out + 1}
    elseif not missing then
      empty = true
    end
  end
  if missing and r == false then r = 'PHAROX_POOL_NOT_FOUND' end
  if selective and r == false then r = 'PHAROX_TOO_SELECTIVE' end
  out[#out + 1] = r
end
flush(d)
local args = {}
for f, q in pairs(dirty) do
  args[#args + 1] = f
  args[#args + 1] = qformat(q)
end
if #args > 0 then redis.call('HSET', QUOTAS, unpack(args)) end
for p in pairs(moved) do redis.call('SET', pk(p, 'rr'), cursors[p]) end
out[1] = {pid, acq or ''}
for j, p in pairs(from) do
  if p ~= pid then out[j][5] = p end
end
return out
