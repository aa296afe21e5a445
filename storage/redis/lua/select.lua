-- Candidate selection, shared by acquire and find. A filter spec (built by
-- filter.go) has k: index-set suffixes the proxy must be in (a pure
-- conjunction), e: a filter tree evaluated per proxy when the filter is more
-- than that conjunction, g: a geo prefilter {lat, lon, r} for the set path.

local function haversine(lat1, lon1, lat2, lon2)
  local rad = math.pi / 180
  local dlat = (lat2 - lat1) * rad
  local dlon = (lon2 - lon1) * rad
  local s1, s2 = math.sin(dlat / 2), math.sin(dlon / 2)
  local a = s1 * s1 + math.cos(lat1 * rad) * math.cos(lat2 * rad) * s2 * s2
  return 2 * 6371.0 * math.asin(math.min(1, math.sqrt(a)))
end

local FIELDS = {'src', 'cc', 'city', 'isp', 'asn', 'proto', 'lat', 'lon'}

-- COOL is set (by use_target) while some of the pool's proxies are not
-- candidates for a while: those cooling down for the acquisition's target
-- (p:<pid>:tc:<target>) and those whose traffic allowance is exhausted
-- (p:<pid>:xh, see quota.lua), each a sorted set scored by when that
-- ends. COOL = {keys = those of the sets that have members, n = their
-- total size, now}. Selection then skips every member whose score is
-- still ahead, reading the sets only for the proxies it considers: the
-- cost grows with the proxies it skips, never with the pool.
local COOL = nil
local TARGET_FIRST = 8 -- members of the first read of a walk only COOL narrows
-- use_target sets COOL for pool pid at now; exhausted says whether the
-- pool's set of exhausted allowances may have members (see QUOTAS).
local function use_target(pid, target, now, exhausted)
  COOL = nil
  local keys, n = {}, 0
  if target ~= nil and target ~= '' then
    local key = pk(pid, 'tc:' .. target)
    local c = redis.call('ZCARD', key)
    if c > 0 then keys[#keys + 1], n = key, n + c end
  end
  if exhausted then
    local key = pk(pid, 'xh')
    local c = redis.call('ZCARD', key)
    if c > 0 then keys[#keys + 1], n = key, n + c end
  end
  if n > 0 then COOL = {keys = keys, n = n, now = now} end
end

-- cooling reports whether proxy id is in one of COOL's sets with a score
-- still ahead.
local function cooling(id)
  if not COOL then return false end
  for _, key in ipairs(COOL.keys) do
    local s = redis.call('ZSCORE', key, id)
    if s ~= false and s ~= nil and tonumber(s) > COOL.now then return true end
  end
  return false
end

-- cool_flags returns, for each of ids, whether it is cooling (one
-- ZMSCORE per set of COOL).
local function cool_flags(ids)
  local out = {}
  for i = 1, #ids do out[i] = false end
  if not COOL or #ids == 0 then return out end
  for _, key in ipairs(COOL.keys) do
    local s = redis.call('ZMSCORE', key, unpack(ids))
    for i = 1, #ids do
      if s[i] and tonumber(s[i]) > COOL.now then out[i] = true end
    end
  end
  return out
end

-- drop_cooling keeps the ids whose ok[i] is true and that are not
-- cooling (see cooling).
local function drop_cooling(ids, ok)
  if not COOL then return end
  local idx, sel = {}, {}
  for i = 1, #ids do
    if ok[i] then idx[#idx + 1] = i sel[#sel + 1] = ids[i] end
  end
  if #sel == 0 then return end
  local c = cool_flags(sel)
  for j, i in ipairs(idx) do
    if c[j] then ok[i] = false end
  end
end

-- proxy_fields returns what eval reads of a proxy: FIELDS by name and, in
-- tags, the set of its tags. v is the proxy's entry in the pool's ff hash,
-- which packs them (see filterFields in codec.go): each value as its
-- length, ':' and its bytes, FIELDS in order, then the tags. One HMGET
-- reads the entries of a whole chunk of proxies. Without an entry, the
-- proxy's own hash is read and tags stays nil (eval then asks the tag
-- sets). Only the first upto values are unpacked (all when nil; tags
-- need 9): the filter's root node says how many it reads (see
-- fieldsRead in filter.go).
local function proxy_fields(id, v, upto)
  local pf = {}
  if not v then
    local f = redis.call('HMGET', xk(id), unpack(FIELDS))
    for i, name in ipairs(FIELDS) do pf[name] = f[i] or '' end
    return pf
  end
  local find, sub = string.find, string.sub
  local tags = {}
  local pos, i = 1, 0
  if upto == nil or upto > 8 then upto = math.huge end
  while pos <= #v and i < upto do
    local c = find(v, ':', pos, true)
    local e = c + tonumber(sub(v, pos, c - 1))
    i = i + 1
    if i <= 8 then pf[FIELDS[i]] = sub(v, c + 1, e) else tags[sub(v, c + 1, e)] = true end
    pos = e + 1
  end
  pf.tags = tags
  return pf
end

-- eval mirrors pharox.Filters.Match.
local function eval(pid, n, id, pf)
  if n.src and pf.src ~= n.src then return false end
  if n.cc and pf.cc ~= n.cc then return false end
  if n.city and pf.city ~= n.city then return false end
  if n.isp and pf.isp ~= n.isp then return false end
  if n.asn and pf.asn ~= n.asn then return false end
  if n.proto and pf.proto ~= n.proto then return false end
  if n.tags then
    for _, t in ipairs(n.tags) do
      if pf.tags then
        if not pf.tags[t] then return false end
      elseif redis.call('SISMEMBER', pk(pid, 'i:tag:' .. t), id) == 0 then
        return false
      end
    end
  end
  if n.geo then
    if pf.lat == '' or pf.lon == '' then return false end
    local plat, plon = tonumber(pf.lat), tonumber(pf.lon)
    if n.geo.r then
      if haversine(n.geo.lat, n.geo.lon, plat, plon) > n.geo.r then return false end
    elseif math.abs(plat - n.geo.lat) > 1e-6 or math.abs(plon - n.geo.lon) > 1e-6 then
      return false
    end
  end
  if n.all then
    for _, c in ipairs(n.all) do
      if not eval(pid, c, id, pf) then return false end
    end
  end
  if n.any then
    local ok = false
    for _, c in ipairs(n.any) do
      if eval(pid, c, id, pf) then ok = true break end
    end
    if not ok then return false end
  end
  if n.none then
    for _, c in ipairs(n.none) do
      if eval(pid, c, id, pf) then return false end
    end
  end
  return true
end

-- exact reports whether proxy id passes the tree E (nil passes all); v
-- is its ff entry when the caller has read it.
local function exact(pid, E, id, v)
  if E == nil then return true end
  if v == nil then v = redis.call('HGET', pk(pid, 'ff'), id) end
  return eval(pid, E, id, proxy_fields(id, v, E.u))
end

-- is_candidate reports whether one proxy may take a lease under the filter.
local function is_candidate(pid, id, keys, E)
  if not redis.call('ZSCORE', pk(pid, 'free'), id) then return false end
  if cooling(id) then return false end
  for _, key in ipairs(keys) do
    if redis.call('SISMEMBER', key, id) == 0 then return false end
  end
  return exact(pid, E, id)
end

-- first_passing returns the first of ids (in order) that passes keys and E.
local function first_passing(pid, ids, keys, E)
  if #ids == 0 then return nil end
  local ok = {}
  for i = 1, #ids do ok[i] = true end
  for _, key in ipairs(keys) do
    local r = redis.call('SMISMEMBER', key, unpack(ids))
    for i = 1, #ids do
      if r[i] == 0 then ok[i] = false end
    end
  end
  drop_cooling(ids, ok)
  if E == nil then
    for i = 1, #ids do
      if ok[i] then return ids[i] end
    end
    return nil
  end
  local pass = {}
  for i = 1, #ids do
    if ok[i] then pass[#pass + 1] = ids[i] end
  end
  if #pass == 0 then return nil end
  local ff = redis.call('HMGET', pk(pid, 'ff'), unpack(pass))
  for i, id in ipairs(pass) do
    if exact(pid, E, id, ff[i]) then return id end
  end
  return nil
end

local function shuffle(t)
  for i = #t, 2, -1 do
    local j = math.random(i)
    t[i], t[j] = t[j], t[i]
  end
end

-- walker returns a function yielding the pool's free proxies in strategy
-- order, CHUNK at a time (first at the first read, when given, for the
-- ordered strategies); it yields nil, complete when done (complete is
-- false when the walk could not cover every free proxy: random sampling).
local function walker(pid, strategy, cursor, first)
  local size = first or CHUNK
  if strategy == 'round_robin' then
    -- After the cursor to the end, then from the start to the cursor;
    -- each read continues after the last member read, so a long walk
    -- costs O(log n) per read, not its offset.
    local ranges
    if blank(cursor) then ranges = {{'-', '+'}}
    else ranges = {{'(' .. cursor, '+'}, {'-', '[' .. cursor}} end
    local ri, from = 1, nil
    return function()
      while ri <= #ranges do
        local ids = redis.call('ZRANGEBYLEX', pk(pid, 'free'), from or ranges[ri][1], ranges[ri][2], 'LIMIT', 0, size)
        size = CHUNK
        if #ids > 0 then from = '(' .. ids[#ids] return ids end
        ri, from = ri + 1, nil
      end
      return nil, true
    end
  elseif strategy == 'random' then
    -- Uniform samples of the free proxies, so the first match is uniform
    -- among the matching ones; up to SCAN free proxies are read whole,
    -- in a shuffled order.
    local whole = nil
    return function()
      if whole == nil then
        whole = redis.call('ZCARD', pk(pid, 'free')) <= SCAN
        if whole then
          local ids = redis.call('ZRANGE', pk(pid, 'free'), 0, -1)
          if #ids == 0 then return nil, true end
          shuffle(ids)
          return ids
        end
      end
      if whole then return nil, true end
      local ids = redis.call('ZRANDMEMBER', pk(pid, 'free'), CHUNK)
      shuffle(ids)
      return ids
    end
  end
  local lists
  if strategy == 'least_used' then lists = {pk(pid, 'lu')}
  else lists = {pk(pid, 'fa:0'), pk(pid, 'fa:1')} end
  local li, off = 1, 0
  return function()
    while li <= #lists do
      local ids = redis.call('ZRANGE', lists[li], off, off + size - 1)
      size = CHUNK
      if #ids > 0 then off = off + #ids return ids end
      li, off = li + 1, 0
    end
    return nil, true
  end
end

-- by_sets chooses among an explicit candidate list: ids when given, else
-- the intersection of the index sets keys, else the union of the index
-- sets src. The caller has checked that the list is at most SCAN long.
local function by_sets(pid, strategy, cursor, keys, src, ids, E)
  if ids then
  elseif #keys > 0 then
    ids = redis.call('SINTER', unpack(keys))
  else
    ids = redis.call('SUNION', unpack(src))
  end
  local cands = {}
  for i = 1, #ids, 512 do
    local part = {}
    for j = i, math.min(i + 511, #ids) do part[#part + 1] = ids[j] end
    if strategy == 'first_available' then
      local s0 = redis.call('ZMSCORE', pk(pid, 'fa:0'), unpack(part))
      local s1 = redis.call('ZMSCORE', pk(pid, 'fa:1'), unpack(part))
      for j, id in ipairs(part) do
        if s0[j] then cands[#cands + 1] = {id, 0, tonumber(s0[j])}
        elseif s1[j] then cands[#cands + 1] = {id, 1, tonumber(s1[j])} end
      end
    elseif strategy == 'least_used' then
      local s = redis.call('ZMSCORE', pk(pid, 'lu'), unpack(part))
      for j, id in ipairs(part) do
        if s[j] then cands[#cands + 1] = {id, tonumber(s[j]), 0} end
      end
    else
      local s = redis.call('ZMSCORE', pk(pid, 'free'), unpack(part))
      for j, id in ipairs(part) do
        if s[j] then
          local wrap = 0
          if not blank(cursor) and id <= cursor then wrap = 1 end
          cands[#cands + 1] = {id, wrap, 0}
        end
      end
    end
  end
  if strategy == 'random' then
    shuffle(cands)
  else
    table.sort(cands, function(a, b)
      if a[2] ~= b[2] then return a[2] < b[2] end
      if a[3] ~= b[3] then return a[3] < b[3] end
      return a[1] < b[1]
    end)
  end
  for _, c in ipairs(cands) do
    if exact(pid, E, c[1]) and not cooling(c[1]) then return c[1] end
  end
  return nil
end

-- select_proxy returns the proxy a lease would take now, or nil; nil and
-- true when it gave up, having read SCAN candidates without finding one
-- (see doc.go, Acquisition cost).
local function select_proxy(pid, strategy, cursor, spec)
  if spec == nil and COOL == nil then
    local free = pk(pid, 'free')
    if strategy == 'first_available' then
      return redis.call('ZRANGE', pk(pid, 'fa:0'), 0, 0)[1] or redis.call('ZRANGE', pk(pid, 'fa:1'), 0, 0)[1]
    elseif strategy == 'least_used' then
      return redis.call('ZRANGE', pk(pid, 'lu'), 0, 0)[1]
    elseif strategy == 'round_robin' then
      if not blank(cursor) then
        local id = redis.call('ZRANGEBYLEX', free, '(' .. cursor, '+', 'LIMIT', 0, 1)[1]
        if id then return id end
      end
      return redis.call('ZRANGEBYLEX', free, '-', '+', 'LIMIT', 0, 1)[1]
    end
    return redis.call('ZRANDMEMBER', free) or nil
  end
  if spec == nil then
    -- Only COOL narrows the candidates: the walk in strategy order
    -- meets at most COOL.n cooling proxies, so it finds one that is not
    -- cooling (or covers every free proxy) within COOL.n + CHUNK reads;
    -- random samples are bounded the same way. The first read is short:
    -- usually most proxies are not cooling.
    local nextc = walker(pid, strategy, cursor, TARGET_FIRST)
    local seen, limit = 0, COOL.n + CHUNK
    while seen < limit do
      local ids, complete = nextc()
      if ids == nil then
        if complete then return nil end
        break
      end
      seen = seen + #ids
      local id = first_passing(pid, ids, {}, nil)
      if id then return id end
    end
    return nil, true
  end
  -- count is how many proxies the index sets leave as candidates: the
  -- smallest set of the conjunction, or the sum over the alternatives of
  -- an AnyOf of each one's smallest set (src); nil when no index set
  -- narrows the filter.
  local keys, src = {}, nil
  local count = nil
  for i, s in ipairs(spec.k or {}) do
    keys[i] = pk(pid, s)
    local n = redis.call('SCARD', keys[i])
    if n == 0 then return nil end
    if count == nil or n < count then count = n end
  end
  if count == nil and spec.a then
    count, src = 0, {}
    for _, alt in ipairs(spec.a) do
      local best, bestn = nil, nil
      for _, s in ipairs(alt) do
        local n = redis.call('SCARD', pk(pid, s))
        if bestn == nil or n < bestn then best, bestn = pk(pid, s), n end
        if n == 0 then break end
      end
      if bestn > 0 then
        src[#src + 1] = best
        count = count + bestn
      end
    end
    if count == 0 then return nil end
  end
  local E = spec.e
  if count and count <= SET_DIRECT then return by_sets(pid, strategy, cursor, keys, src, nil, E) end
  -- Walk the free proxies in strategy order: a filter that matches a fair
  -- share of them finds one at once.
  local nextc = walker(pid, strategy, cursor)
  local seen = 0
  local function walk(limit)
    while seen < limit do
      local ids, complete = nextc()
      if ids == nil then return nil, complete end
      seen = seen + #ids
      local id = first_passing(pid, ids, keys, E)
      if id then return id end
    end
    return nil, false
  end
  local id, complete = walk(WALK)
  if id or complete then return id end
  if count and count <= SCAN then return by_sets(pid, strategy, cursor, keys, src, nil, E) end
  if count == nil and spec.g then
    -- ANY stops the search once it has more than SCAN.
    local ids = redis.call('GEOSEARCH', pk(pid, 'geo'), 'FROMLONLAT', spec.g.lon, spec.g.lat,
      'BYRADIUS', spec.g.r, 'km', 'COUNT', SCAN + 1, 'ANY')
    if #ids + redis.call('SCARD', pk(pid, 'polar')) <= SCAN then
      for _, p in ipairs(redis.call('SMEMBERS', pk(pid, 'polar'))) do ids[#ids + 1] = p end
      return by_sets(pid, strategy, cursor, keys, src, ids, E)
    end
  end
  -- No index narrows the candidates to SCAN: walk on, up to SCAN.
  id, complete = walk(SCAN)
  if id or complete then return id end
  return nil, true
end
