-- track: count consumer ARGV[2]'s active leases in pool ARGV[3] in its
-- set of active leases (see CACT in lib.lua), marking their records (q =
-- the consumer's id) so that their ends take them out again. SetQuota
-- runs it for every pool when a consumer gets a max_concurrent_leases
-- quota: its leases from before were not counted. Returns how many
-- leases it marked.
local cid, pid = ARGV[2], ARGV[3]
local key = cact(cid)
local ids = redis.call('ZRANGE', pk(pid, 'exp'), 0, -1)
local n = 0
for i = 1, #ids, 512 do
  local vals = redis.call('HMGET', LEASES, unpack(ids, i, math.min(i + 511, #ids)))
  for j, v in ipairs(vals) do
    if v then
      local st, exp, _, _, _, q = lease_fields(v)
      if st == 'active' and q == '' and lease_consumer(v) == cid then
        -- q sits between the record's sixth and seventh '|'.
        local at = 0
        for _ = 1, 6 do at = string.find(v, '|', at + 1, true) end
        local lid = ids[i + j - 1]
        redis.call('HSET', LEASES, lid, string.sub(v, 1, at) .. cid .. string.sub(v, at + 1))
        redis.call('ZADD', key, exp, lid)
        n = n + 1
      end
    end
  end
end
return n
