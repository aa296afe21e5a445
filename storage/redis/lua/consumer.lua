-- ensure consumer. ARGV: 2 name, 3 id to use if new. Returns "id|created".
-- A new consumer is recorded by name (consumers: EnsureConsumer,
-- ListConsumers), by id (cbyid: GetConsumer) and in cids (AcquireLease's
-- existence check), all in this one script.
local v = redis.call('HGET', P .. 'consumers', ARGV[2])
if v then return v end
local created = fmt(now_us())
v = ARGV[3] .. '|' .. created
redis.call('HSET', P .. 'consumers', ARGV[2], v)
redis.call('HSET', P .. 'cbyid', ARGV[3], created .. '|' .. ARGV[2])
redis.call('SADD', P .. 'cids', ARGV[3])
return v
