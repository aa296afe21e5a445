-- touch api keys. ARGV: pairs of id and last use (us) from 2 on. Sets each
-- existing key's used to the later of its own and the given time, so
-- touches may arrive in any order, or twice.
for i = 2, #ARGV, 2 do
  local k = P .. 'key:' .. ARGV[i]
  if redis.call('EXISTS', k) == 1 then
    local cur = redis.call('HGET', k, 'used')
    if blank(cur) or tonumber(cur) < tonumber(ARGV[i + 1]) then
      redis.call('HSET', k, 'used', ARGV[i + 1])
    end
  end
end
return 1
