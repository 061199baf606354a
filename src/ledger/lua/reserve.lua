-- Places a hold if the wallet can afford it and the limits allow it.
-- ARGV: requestId, fingerprint, fixed, perUnit, minUnits, maxUnits, ttlMs,
--       day field, month field, maxPerRequest, dailyCap, monthlyCap (the
--       last three '' when unset), how many expired holds to settle first.
local id, fingerprint = ARGV[1], ARGV[2]
local fixed, per_unit = tonumber(ARGV[3]), tonumber(ARGV[4])
local min_units, max_units = tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl_ms = tonumber(ARGV[7])
local day, month = ARGV[8], ARGV[9]

local now = server_time_ms()
settle_expired(now, tonumber(ARGV[13]))

local open = read_hold(id)
if open then
  if open.fingerprint ~= fingerprint then return { 'conflict', 'fingerprint_mismatch' } end
  return { 'reserved', amount_string(open.amount), open.units, '1' }
end
local done = read_done(id)
if done then
  if done.fingerprint ~= '' and done.fingerprint ~= fingerprint then return { 'conflict', 'fingerprint_mismatch' } end
  if done.state ~= 'released' then return { 'conflict', 'already_settled' } end
end
if redis.call('HGET', ACCT, 'closed') == '1' then return { 'wallet_closed' } end

-- The caller checked that the minimum hold is at most 2^53, so it is exact.
local required = fixed + per_unit * min_units
local budget = nil
local function limit_budget(value)
  if budget == nil or value < budget then budget = value end
end

if ARGV[10] ~= '' then
  local max_per_request = tonumber(ARGV[10])
  if required > max_per_request then
    return { 'limit_exceeded', 'maxPerRequest', amount_string(required), ARGV[10] }
  end
  limit_budget(max_per_request)
end

local caps = { { 'dailyCap', ARGV[11], day }, { 'monthlyCap', ARGV[12], month } }
for _, cap in ipairs(caps) do
  if cap[2] ~= '' then
    local remaining = tonumber(cap[2]) - to_amount(redis.call('HGET', ACCT, cap[3]))
    if remaining < 0 then remaining = 0 end
    if required > remaining then
      return { 'limit_exceeded', cap[1], amount_string(required), amount_string(remaining) }
    end
    limit_budget(remaining)
  end
end

local totals = redis.call('HMGET', ACCT, 'granted', 'spent', 'reserved')
local available = to_amount(totals[1]) - to_amount(totals[2]) - to_amount(totals[3])
if required > available then
  return { 'insufficient_funds', amount_string(available), amount_string(required) }
end
limit_budget(available)

local units = max_units
if per_unit > 0 and max_units > min_units then
  -- math.fmod is exact on doubles, so the numerator is an exact multiple of
  -- per_unit and the quotient is the exact floor of spare / per_unit.
  local spare = budget - fixed
  local affordable = (spare - math.fmod(spare, per_unit)) / per_unit
  if affordable < max_units then units = affordable end
end
local amount = fixed + per_unit * units
local expires = now + ttl_ms

write_hold(id, {
  amount = amount, units = amount_string(units), expires = expires, answered = false,
  day = day, month = month, fingerprint = fingerprint,
})
redis.call('ZADD', HEXP, amount_string(expires), id)
redis.call('HDEL', DONE, id)
add('reserved', amount)
add_to_periods(day, month, amount)
return { 'reserved', amount_string(amount), amount_string(units), '0' }
