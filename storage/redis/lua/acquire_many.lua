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
-- selection gave up).
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
  if COOL and #h.ids > 0 then
    local s = redis.call('ZMSCORE', COOL.key, unpack(h.ids))
    for i = 1, #h.ids do h.cool[i] = s[i] and tonumber(s[i]) > COOL.now end
  end
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
local function choose(pid)
  if not drained[pid] then
    flush(d)
    drained[pid] = reclaim(pid, now, RECLAIM) < RECLAIM
    heads[pid] = nil
  end
  if cools[pid] == nil then
    use_target(pid, target, now)
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
-- acquisitions only fill slots, so nothing frees up for later items.
local pid, checked, missing, empty = ARGV[5], false, false, false
local function pick()
  local chosen = nil
  if pid ~= '' then chosen = choose(pid) end
  if chosen or checked then return chosen end
  local real = redis.call('HGET', P .. 'pools', pname)
  checked = true
  if not real then missing = true return nil end
  if real ~= pid then
    pid = real
    chosen = choose(pid)
  end
  return chosen
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
    local chosen = pick()
    if chosen then
      local sent = dyn[chosen]
      local cur, f = take_slot(pid, chosen, sent, d)
      dyn[chosen] = f
      if fa_fast and not has_room(cur, f[10]) then heads[pid].i = heads[pid].i + 1 end
      local exp = exps[dur]
      if not exp then exp = fmt(now + tonumber(dur)) exps[dur] = exp end
      lease_write(lid, lease_record(chosen, pid, acq, exp, f[10], ARGV[i + 5]), d)
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
for p in pairs(moved) do redis.call('SET', pk(p, 'rr'), cursors[p]) end
out[1] = {pid, acq or ''}
for j, p in pairs(from) do
  if p ~= pid then out[j][5] = p end
end
return out
