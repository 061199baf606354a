-- Settles due members of the expiry index (expired holds, and settled
-- records whose retention ended), at most `limit` per call. After the last
-- batch it lapses the grants whose expiry is at or before `now`, and indexes
-- up to `limit` settled records that have no index member yet.
-- ARGV: nowMs ('' for the server clock), limit, retention of settled records in ms.
-- Returns {released, charged, removed, index members read}.
local now
if ARGV[1] == '' then now = server_time_ms() else now = tonumber(ARGV[1]) end
local limit = tonumber(ARGV[2])
local released, charged, removed, seen = settle_expired(now, limit, ARGV[3])

-- Fewer members than the limit means nothing due is left, so the lapses see
-- the same holds as in the in-memory ledger, which settles all of them first.
if seen < limit then
  local acct = redis.call('HMGET', ACCT, 'granted', 'spent', 'expired', 'reserved', 'nextExpiry', 'doneIndexed')
  if acct[5] and tonumber(acct[5]) <= now then
    local _, _, lapse_grants = grant_expiry_helpers()
    lapse_grants(now, to_amount(acct[1]), to_amount(acct[2]), to_amount(acct[3]), to_amount(acct[4]))
  end

  -- Records settled by a ledger version without retention have no member
  -- in the expiry index, so nothing would remove them. Each sweep scans the
  -- next `limit` records with HSCAN and gives those without a member one at
  -- now + retention. ZADD NX leaves indexed ids as they are. The cursor is
  -- kept in `doneScan` until the scan ends, and `doneIndexed` marks its end.
  if not acct[6] and redis.call('EXISTS', DONE) == 1 then
    local page = redis.call('HSCAN', DONE, redis.call('HGET', ACCT, 'doneScan') or '0', 'COUNT', limit)
    local deadline = amount_string(now + tonumber(ARGV[3]))
    local records = page[2]
    for i = 1, #records, 2 do redis.call('ZADD', HEXP, 'NX', deadline, records[i]) end
    if page[1] == '0' then
      redis.call('HSET', ACCT, 'doneIndexed', '1')
      redis.call('HDEL', ACCT, 'doneScan')
    else
      redis.call('HSET', ACCT, 'doneScan', page[1])
    end
  end
end
return { released, charged, removed, seen }
