-- Flags an open hold as answered, so that the sweeper charges it on expiry.
-- ARGV: requestId.
local open = read_hold(ARGV[1])
if open and not open.answered then
  write_hold(ARGV[1], open.amount_text, open.units, open.expires, true, open.day, open.month, open.fingerprint, open.epoch)
end
return 1
