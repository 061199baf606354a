-- Flags an open hold as answered, so that the sweeper charges it on expiry.
-- ARGV: requestId.
local open = read_hold(ARGV[1])
if open and not open.answered then
  open.answered = true
  write_hold(ARGV[1], open)
end
return 1
