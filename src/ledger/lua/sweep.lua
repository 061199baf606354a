-- Settles expired holds, at most `limit` per call, and after the last batch
-- lapses the grants whose expiry is at or before `now`.
-- ARGV: nowMs ('' for the server clock), limit.
-- Returns {released, charged, expiry entries read}.
local now
if ARGV[1] == '' then now = server_time_ms() else now = tonumber(ARGV[1]) end
local released, charged, seen = settle_expired(now, ARGV[2])

-- Fewer entries than the limit means no expired hold is left, so the lapses
-- see the same holds as in the in-memory ledger, which settles all of them first.
if seen < tonumber(ARGV[2]) then
  local acct = redis.call('HMGET', ACCT, 'granted', 'spent', 'expired', 'reserved', 'nextExpiry')
  if acct[5] and tonumber(acct[5]) <= now then
    local _, _, lapse_grants = grant_expiry_helpers()
    lapse_grants(now, to_amount(acct[1]), to_amount(acct[2]), to_amount(acct[3]), to_amount(acct[4]))
  end
end
return { released, charged, seen }
