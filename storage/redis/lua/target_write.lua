-- write a target entry that ApplyTargetOutcome computed with
-- pharox.TargetState.Apply from the record target_read.lua returned: an
-- optimistic compare-and-set, so the one rule stays in Go and the write
-- stays atomic across processes. ARGV: 2 proxy id, 3 target, 4 the record
-- read ('' when none), 5 the new record (it carries the call's token, so
-- it differs from every other write), 6 its cool-down end (us, '' when
-- none), 7 its cool-down start (us, ''), 8 when it went idle (us), 9 the
-- most entries a proxy keeps, 10 the start of the escalation window (us).
-- Returns {1, the proxy's entries whose cool-down started since ARGV 10},
-- or {0} when the entry changed since it was read (the caller reads and
-- applies again). Finding its own record (a client's retry of this very
-- write), it answers as the first run did.
local id, t, old, new = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local k = xk(id)
local pid = redis.call('HGET', k, 'pool')
if not pid then return redis.error_reply('PHAROX_PROXY_NOT_FOUND') end
local cur = redis.call('HGET', k .. ':t', t)
if cur ~= new then
  if (cur or '') ~= old then return {0} end
  redis.call('HSET', k .. ':t', t, new)
  index_target(pid, id, t, ARGV[6], ARGV[7], ARGV[8])
  if not cur then
    redis.call('HINCRBY', pk(pid, 'tn'), t, '1')
    -- A new entry beyond the cap evicts the longest-idle others.
    local over = redis.call('HLEN', k .. ':t') - tonumber(ARGV[9])
    if over > 0 then
      for _, v in ipairs(redis.call('ZRANGE', k .. ':ti', 0, over)) do
        if over == 0 then break end
        if v ~= t then over = over - drop_target(pid, id, v) end
      end
    end
  end
end
return {1, redis.call('ZCOUNT', k .. ':tb', ARGV[10], '+inf')}
