-- reclaim expired leases of the given pools (all when none). ARGV: 2.. pool ids.
local now = now_us()
local pids = {}
for i = 2, #ARGV do pids[#pids + 1] = ARGV[i] end
if #pids == 0 then pids = redis.call('HVALS', P .. 'pools') end
local n = 0
for _, pid in ipairs(pids) do n = n + reclaim(pid, now, 1000000) end
return n
