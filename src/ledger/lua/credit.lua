-- Adds a grant, once per grant id. An expiring grant also joins the wallet's
-- live expiring grants (see common.lua).
-- ARGV: grantId, amount, reason, maximum granted total (2^53), expiry in
--       epoch ms ('' for a grant that never expires).
-- Returns {'credited', balance}, {'replayed', balance, the amount first
-- credited for the grant id}, {'too_large', granted} or {'expired', server
-- time in ms} for an expiry at or before the server's clock.
local id, amount, expires = ARGV[1], tonumber(ARGV[2]), ARGV[5]
local totals = redis.call('HMGET', ACCT, 'granted', 'spent', 'expired')
local granted, spent, expired = to_amount(totals[1]), to_amount(totals[2]), to_amount(totals[3])
-- A new wallet without settled records has no records of earlier ledger
-- versions, so the sweeps need not scan for them (see sweep.lua).
if not totals[1] and redis.call('EXISTS', DONE) == 0 then redis.call('HSET', ACCT, 'doneIndexed', '1') end

local credited = redis.call('HGET', GRANTS, id)
if credited then
  return { 'replayed', amount_string(granted - spent - expired), credited }
end
if expires ~= '' then
  local now = server_time_ms()
  if tonumber(expires) <= now then return { 'expired', amount_string(now) } end
end
-- Compared as a difference, because granted + amount may exceed 2^53 and round.
if amount > tonumber(ARGV[4]) - granted then
  return { 'too_large', amount_string(granted) }
end

redis.call('HSET', GRANTS, id, ARGV[2])
add('granted', amount)
if expires == '' then
  append_entry({ 'type', 'grant', 'id', id, 'amount', ARGV[2], 'reason', ARGV[3] })
else
  append_entry({ 'type', 'grant', 'id', id, 'amount', ARGV[2], 'reason', ARGV[3], 'expiresAt', expires })

  -- The live grants change here, so the charges so far go to the grants
  -- that were live while they happened.
  local attribute_charges, write_expiring = grant_expiry_helpers()
  local fields = redis.call('HMGET', ACCT, 'expiring', 'attributed')
  local grants = fields[1] and cjson.decode(fields[1]) or {}
  attribute_charges(grants, spent, to_amount(fields[2]))

  -- Keeps the order of expiry, then grant id in byte order, which Lua's `<`
  -- on strings does not give because it follows the server's locale.
  local expiry = tonumber(expires)
  local function before(other)
    local other_expiry = tonumber(other[2])
    if expiry ~= other_expiry then return expiry < other_expiry end
    for i = 1, math.min(#id, #other[1]) do
      local mine, theirs = string.byte(id, i), string.byte(other[1], i)
      if mine ~= theirs then return mine < theirs end
    end
    return #id < #other[1]
  end
  local position = #grants + 1
  for i, other in ipairs(grants) do
    if before(other) then
      position = i
      break
    end
  end
  table.insert(grants, position, { id, expires, ARGV[2] })
  write_expiring(grants, spent)
end
return { 'credited', amount_string(granted + amount - spent - expired) }
