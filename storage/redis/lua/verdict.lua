-- claim a lease's verdict. ARGV: 2 lease id, 3 the call's token. Returns
-- 1 when this call is the first to claim it (or is that call sent again,
-- found by its token), else 0.
local lid, tok = ARGV[2], ARGV[3]
if redis.call('HEXISTS', LEASES, lid) == 0 then return redis.error_reply('PHAROX_LEASE_NOT_FOUND') end
if redis.call('HSETNX', P .. 'verdicts', lid, tok) == 1 then return 1 end
if redis.call('HGET', P .. 'verdicts', lid) == tok then return 1 end
return 0
