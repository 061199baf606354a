-- Settles expired holds, at most `limit` per call.
-- ARGV: nowMs ('' for the server clock), limit.
-- Returns {released, charged, expiry entries read}.
local now
if ARGV[1] == '' then now = server_time_ms() else now = tonumber(ARGV[1]) end
local released, charged, seen = settle_expired(now, ARGV[2])
return { released, charged, seen }
