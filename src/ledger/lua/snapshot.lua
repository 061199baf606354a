-- Reads what verify compares, in one step: the stored totals, the grant
-- amounts, the packed open holds, the checkpoint and the id of the last
-- stream entry, so that verify replays exactly the entries that the totals
-- include and the checkpoint does not.
-- KEYS[7]: the wallet's checkpoint hash.
local totals = redis.call('HMGET', ACCT, 'granted', 'spent', 'reserved', 'providerCost', 'expired')
for i = 1, 5 do totals[i] = totals[i] or '0' end
local checkpoint = redis.call('HMGET', KEYS[7], 'granted', 'spent', 'expired', 'providerCost', 'entries', 'lastId')
for i = 1, 6 do checkpoint[i] = checkpoint[i] or '' end
local last = redis.call('XREVRANGE', LOG, '+', '-', 'COUNT', 1)
local last_id = ''
if #last > 0 then last_id = last[1][1] end
return { totals, redis.call('HVALS', GRANTS), redis.call('HVALS', HOLDS), last_id, checkpoint }
