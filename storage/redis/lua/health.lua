-- apply a health result (pharox.Proxy.ApplyHealthCheck). ARGV: 2 id,
-- 3 status, 4 checked (us), 5 latency (ms), 6 status code, 7 error, 8 threshold.
local id, rst, chk = ARGV[2], ARGV[3], ARGV[4]
local k = xk(id)
local pid = redis.call('HGET', k, 'pool')
if not pid then return false end
reclaim(pid, now_us(), RECLAIM)
local f = redis.call('HMGET', k, 'status', 'streak', 'cur', 'maxc')
local st = f[1]
local streak = tonumber(f[2]) or 0
local nxt = st
if leasable(rst) then
  streak = 0
  nxt = rst
else
  streak = streak + 1
  if streak >= math.max(1, tonumber(ARGV[8])) then nxt = rst end
end
redis.call('HSET', k, 'chk', chk, 'latms', ARGV[5], 'code', ARGV[6], 'err', ARGV[7], 'streak', streak)
if nxt ~= st then
  redis.call('HSET', k, 'status', nxt, 'chg', chk)
  redis.call('HINCRBY', pk(pid, 'cnt'), st, -1)
  redis.call('HINCRBY', pk(pid, 'cnt'), nxt, 1)
end
sync_free(pid, id, nxt, tonumber(f[3]), f[4], chk)
return redis.call('HGETALL', k)
