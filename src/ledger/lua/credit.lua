-- Adds a grant, once per grant id.
-- ARGV: grantId, amount, reason, maximum granted total (2^53).
-- Returns {'credited' | 'replayed', balance} or {'too_large', granted}.
local id, amount = ARGV[1], tonumber(ARGV[2])
local totals = redis.call('HMGET', ACCT, 'granted', 'spent')
local granted, spent = to_amount(totals[1]), to_amount(totals[2])

if redis.call('HEXISTS', GRANTS, id) == 1 then
  return { 'replayed', amount_string(granted - spent) }
end
-- Compared as a difference, because granted + amount may exceed 2^53 and round.
if amount > tonumber(ARGV[4]) - granted then
  return { 'too_large', amount_string(granted) }
end

redis.call('HSET', GRANTS, id, ARGV[2])
add('granted', amount)
append_entry({ 'type', 'grant', 'id', id, 'amount', ARGV[2], 'reason', ARGV[3] })
return { 'credited', amount_string(granted + amount - spent) }
