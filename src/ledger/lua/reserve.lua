-- Places a hold if the wallet can afford it and the limits allow it.
-- ARGV: requestId, fingerprint, fixed, perUnit, minUnits, maxUnits, ttlMs,
--       day field, month field, maxPerRequest, dailyCap, monthlyCap (the
--       last three '' when unset), how many due members of the expiry
--       index to settle first, retention of settled records in ms, and
--       the reserve's deadline on the server's clock in epoch ms ('' for
--       none).
local id, fingerprint = ARGV[1], ARGV[2]
local fixed, per_unit = tonumber(ARGV[3]), tonumber(ARGV[4])
local min_units, max_units = tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl_ms = tonumber(ARGV[7])
local day, month = ARGV[8], ARGV[9]

local now = server_time_ms()
-- The caller gave up on a reserve that runs after its deadline, so it changes nothing.
local deadline = tonumber(ARGV[15])
if deadline and now > deadline then return { 'late' } end
settle_expired(now, ARGV[13], ARGV[14])

local open = read_hold(id)
if open then
  if open.fingerprint ~= fingerprint then return { 'conflict', 'fingerprint_mismatch' } end
  return { 'reserved', open.amount_text, open.units, '1' }
end
local done = read_done(id)
if done then
  if done.fingerprint ~= '' and done.fingerprint ~= fingerprint then return { 'conflict', 'fingerprint_mismatch' } end
  if done.state ~= 'released' then return { 'conflict', 'already_settled', done.state } end
end

-- One HMGET reads every account field that the checks and the update use.
-- A wallet without live expiring grants has no `nextExpiry`, so for it the
-- grant expiry costs no command.
local acct = redis.call('HMGET', ACCT, 'closed', 'granted', 'spent', 'reserved', day, month, 'expired', 'nextExpiry')
if acct[1] == '1' then return { 'wallet_closed' } end
local expired = to_amount(acct[7])
if acct[8] and tonumber(acct[8]) <= now then
  local _, _, lapse_grants = grant_expiry_helpers()
  expired = lapse_grants(now, to_amount(acct[2]), to_amount(acct[3]), expired, to_amount(acct[4]))
end

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

-- Returns the rejection when the cap ('' when unset) leaves less than
-- `required` after `used`, else lowers the budget to what the cap leaves.
local function check_cap(name, cap, used)
  if cap == '' then return nil end
  local remaining = tonumber(cap) - to_amount(used)
  if remaining < 0 then remaining = 0 end
  if required > remaining then
    return { 'limit_exceeded', name, amount_string(required), amount_string(remaining) }
  end
  limit_budget(remaining)
  return nil
end

local rejection = check_cap('dailyCap', ARGV[11], acct[5]) or check_cap('monthlyCap', ARGV[12], acct[6])
if rejection then return rejection end

local old_reserved = to_amount(acct[4])
local available = to_amount(acct[2]) - to_amount(acct[3]) - expired - old_reserved
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
-- Each value is formatted once, for the hold, the expiry index and the reply.
local amount_text, units_text, expires_text = amount_string(amount), amount_string(units), amount_string(now + ttl_ms)

write_hold(id, amount_text, units_text, expires_text, false, day, month, fingerprint)
redis.call('ZADD', HEXP, expires_text, id)
-- Only a released request has a record here, and the new hold reuses its
-- id. The ZADD above moved the id's index entry to the hold's expiry.
if done then redis.call('HDEL', DONE, id) end

-- One HSET of the new totals measured cheaper on Redis 7.0 than a HINCRBY per field.
-- `amount` is positive here, so the sums are exact while every old value is
-- above -2^53 and every new one below 2^53 (strictly, because a rounded sum
-- can land on 2^53). Past that, HINCRBY adds exactly in 64-bit integers.
if amount ~= 0 then
  local old_day, old_month = to_amount(acct[5]), to_amount(acct[6])
  local reserved, day_total, month_total = old_reserved + amount, old_day + amount, old_month + amount
  if math.min(old_reserved, old_day, old_month) > -2^53 and math.max(reserved, day_total, month_total) < 2^53 then
    redis.call('HSET', ACCT, 'reserved', amount_string(reserved), day, amount_string(day_total), month, amount_string(month_total))
  else
    add('reserved', amount, amount_text)
    add_to_periods(day, month, amount)
  end
end
return { 'reserved', amount_text, units_text, '0' }
