-- Helpers shared by every ledger script; the loader puts this file in front
-- of each script. Every script receives the same six keys of one wallet, in
-- this order, and the scripts that read the checkpoint also get its key as
-- KEYS[7]. The keys share one hash tag, so a script runs on one shard of a
-- Redis Cluster.
--
-- Redis runs this file on every call. Each helper it defines, and each local
-- that a helper captures, costs server time on every call. So the file
-- defines only helpers that the scripts use, and the helpers name constants
-- and library functions directly instead of capturing them in locals.
local ACCT, HOLDS, HEXP, DONE, LOG, GRANTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

-- Amounts are integers of at most 2^53 nano-units, which Lua numbers
-- (doubles) represent exactly. They cross the script boundary as decimal
-- strings, because tostring() would print large numbers as 1e+15. '%d'
-- converts through a C long in Redis's Lua 5.1. On 64-bit builds, which
-- RedisLedger checks for before its first script, that is exact for these
-- integers and cheaper than printing a double with '%.0f'. Other values
-- (beyond 2^53, fractions, nan) keep '%.0f'.
local function amount_string(n)
  if n >= -2^53 and n <= 2^53 and n % 1 == 0 then return string.format('%d', n) end
  return string.format('%.0f', n)
end

local function to_amount(value)
  return tonumber(value) or 0
end

-- Adds `delta` to an account field. HINCRBY adds exactly in 64-bit integers
-- on the server. `text` is the delta as a decimal string when the caller
-- already has one, which saves formatting it again.
local function add(field, delta, text)
  if delta ~= 0 then redis.call('HINCRBY', ACCT, field, text or amount_string(delta)) end
end

-- Adds `delta` to the day and month counters that the spend caps read.
local function add_to_periods(day, month, delta)
  if delta == 0 then return end
  local text = amount_string(delta)
  redis.call('HINCRBY', ACCT, day, text)
  redis.call('HINCRBY', ACCT, month, text)
end

local function server_time_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- An open hold is stored as amount|units|expiresAtMs|flags|day|month|fingerprint.
-- The fingerprint comes last and may itself contain '|'. One pattern match
-- splits the record, which costs less than a find and a sub per field.
-- The hold carries `amount` as a number and also as its stored text. `units`
-- and `expires` stay text, because the scripts only copy them. `flags` is
-- 1 when the upstream answered, else 0, followed by ':<epoch>' when the hold
-- covers lapsed grants (see lapse_grants).
local function read_hold(id)
  local packed = redis.call('HGET', HOLDS, id)
  if not packed then return nil end
  local amount, units, expires, flags, day, month, fingerprint =
    string.match(packed, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return {
    amount = tonumber(amount), amount_text = amount, units = units, expires = expires,
    answered = string.byte(flags, 1) == 49, epoch = #flags > 1 and tonumber(string.sub(flags, 3)) or nil,
    day = day, month = month, fingerprint = fingerprint,
  }
end

-- Stores an open hold. `amount`, `units` and `expires` are decimal strings.
local function write_hold(id, amount, units, expires, answered, day, month, fingerprint, epoch)
  local flags = answered and '1' or '0'
  if epoch then flags = flags .. ':' .. epoch end
  redis.call('HSET', HOLDS, id,
    amount .. '|' .. units .. '|' .. expires .. '|' .. flags .. '|' .. day .. '|' .. month .. '|' .. fingerprint)
end

-- Deletes an open hold and returns its amount to the wallet's available funds.
-- The request id stays in the expiry index with the score `deadline` (a
-- decimal string of epoch ms), the end of the retention of the settled
-- record that the caller writes. Moving the member is one command, as
-- removing it was.
local function settle_hold(id, hold, deadline)
  redis.call('HDEL', HOLDS, id)
  redis.call('ZADD', HEXP, deadline, id)
  add('reserved', -hold.amount, '-' .. hold.amount_text)
end

-- A settled request is stored as state|charged|released|day|month|fingerprint,
-- where state is committed, released, expired or expired_charged. Its id
-- stays in the expiry index until the end of its retention.
local function read_done(id)
  local packed = redis.call('HGET', DONE, id)
  if not packed then return nil end
  local state, charged, released, day, month, fingerprint =
    string.match(packed, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return {
    state = state, charged = tonumber(charged), released = tonumber(released),
    day = day, month = month, fingerprint = fingerprint,
  }
end

local function write_done(id, done)
  redis.call('HSET', DONE, id,
    done.state .. '|' .. amount_string(done.charged) .. '|' .. amount_string(done.released) .. '|' ..
    done.day .. '|' .. done.month .. '|' .. done.fingerprint)
end

local function append_entry(fields)
  redis.call('XADD', LOG, '*', unpack(fields))
end

-- Expiring grants. The account hash keeps the wallet's live expiring grants
-- in the field `expiring`, a JSON array of {grant id, expiry in epoch ms,
-- remaining amount}, all strings, in order of expiry, then grant id in byte
-- order. It also keeps the earliest expiry in `nextExpiry`, which reserve
-- reads with its other account fields, and in `attributed` the value of
-- `spent` up to which charges are attributed to the grants. A wallet without
-- live expiring grants has none of the three fields.
-- NOTE: credit, sweep and a lapse decode and rewrite the whole JSON field, so
-- their cost grows with the number of live expiring grants of the wallet.
--
-- Only credit, sweep and a reserve with a due grant need these helpers, so
-- one function builds them on demand, and other calls pay for one closure
-- instead of four. Returns attribute_charges, write_expiring, lapse_grants,
-- settle_cover.
local function grant_expiry_helpers()
  -- Attributes the charges since the last attribution (`spent - attributed`)
  -- to the grants, earliest expiry first, lowering their remaining amounts.
  -- A negative difference, left by a late commit that lowered an
  -- expire-charge, lowers no grant.
  local function attribute_charges(grants, spent, attributed)
    local pending = spent - attributed
    for _, grant in ipairs(grants) do
      if pending <= 0 then return end
      local remaining = tonumber(grant[3])
      local taken = math.min(remaining, pending)
      grant[3] = amount_string(remaining - taken)
      pending = pending - taken
    end
  end

  -- Stores the live grants with their earliest expiry, and records that the
  -- charges up to `spent` are attributed.
  local function write_expiring(grants, spent)
    if #grants == 0 then
      redis.call('HDEL', ACCT, 'expiring', 'nextExpiry', 'attributed')
    else
      redis.call('HSET', ACCT, 'expiring', cjson.encode(grants), 'nextExpiry', grants[1][2], 'attributed', amount_string(spent))
    end
  end

  -- Lapses the grants whose expiry is at or before `now`, earliest first,
  -- after attributing the charges so far. Open holds may still be charged
  -- from a grant's rest, so they cover it first: holds draw on expiring
  -- grants before other funds, earliest expiry first, and each grant gets
  -- the part of `reserved` that earlier lapsed grants do not hold yet. What
  -- the holds do not cover is taken back now, but no more than the balance
  -- beyond the open holds, with an `expire` entry.
  --
  -- The covered part waits in the field `lapsing`, a JSON array of {grant
  -- id, amount, epoch} in order of expiry. Each lapse that leaves a covered
  -- part is an epoch (the counter `lapseEpoch`), and every open hold that is
  -- not flagged yet is flagged with it: a hold may be charged from the
  -- grants of its epoch and later ones, which were live when it was placed.
  -- `lapsingHeld` is a JSON array of {epoch, amount}: what the open holds of
  -- each epoch still hold. settle_cover lapses the waiting amounts as those
  -- holds settle. The caller passes the current totals. Returns the new
  -- expired total.
  local function lapse_grants(now, granted, spent, expired, reserved)
    local fields = redis.call('HMGET', ACCT, 'expiring', 'attributed', 'lapsing', 'lapsingHeld', 'lapseEpoch')
    local grants = fields[1] and cjson.decode(fields[1]) or {}
    attribute_charges(grants, spent, to_amount(fields[2]))
    local lapsing = fields[3] and cjson.decode(fields[3]) or {}
    local held = fields[4] and cjson.decode(fields[4]) or {}
    local epoch = to_amount(fields[5]) + 1
    local cover = reserved
    for _, grant in ipairs(lapsing) do cover = cover - tonumber(grant[2]) end
    -- Without waiting amounts, no flag of an open hold counts any more.
    local fresh = #lapsing == 0

    local lapsed, covered = 0, false
    for _, grant in ipairs(grants) do
      if tonumber(grant[2]) > now then break end
      local remaining = tonumber(grant[3])
      local covered_part = math.max(0, math.min(remaining, cover))
      cover = cover - covered_part
      local free = granted - spent - expired - reserved
      if free < 0 then free = 0 end
      local taken_back = math.min(remaining - covered_part, free)
      expired = expired + taken_back
      append_entry({ 'type', 'expire', 'id', grant[1], 'amount', amount_string(taken_back) })
      if covered_part > 0 then
        lapsing[#lapsing + 1] = { grant[1], amount_string(covered_part), epoch }
        covered = true
      end
      lapsed = lapsed + 1
    end

    if covered then
      -- Every hold open now was placed before these expiries.
      local flagged = 0
      if fresh then held = {} end
      for _, id in ipairs(redis.call('HKEYS', HOLDS)) do
        local hold = read_hold(id)
        if fresh or not hold.epoch then
          write_hold(id, hold.amount_text, hold.units, hold.expires, hold.answered, hold.day, hold.month, hold.fingerprint, epoch)
          flagged = flagged + hold.amount
        end
      end
      if flagged > 0 then held[#held + 1] = { epoch, amount_string(flagged) } end
      redis.call('HSET', ACCT, 'lapsing', cjson.encode(lapsing), 'lapsingHeld', cjson.encode(held), 'lapseEpoch', epoch)
    end

    local live = {}
    for i = lapsed + 1, #grants do live[#live + 1] = grants[i] end
    redis.call('HSET', ACCT, 'expired', amount_string(expired))
    write_expiring(live, spent)
    return expired
  end

  -- Settles a hold flagged by lapse_grants with `epoch`: `amount` was held,
  -- `charged` is what the wallet pays for it (0 when released). The charge
  -- is taken from the waiting grants of that epoch and later, earliest
  -- expiry first, and is then attributed, so the live grants do not pay it
  -- again. The grants of the first k epochs can only be charged to the holds
  -- of the first k epochs, so what those holds no longer cover lapses,
  -- latest expiry first, with an `expire` entry per grant. Returns what the
  -- waiting grants paid of the charge.
  local function settle_cover(epoch, amount, charged)
    local fields = redis.call('HMGET', ACCT, 'lapsing', 'lapsingHeld', 'expired', 'attributed')
    if not fields[1] then return 0 end
    local lapsing, held = cjson.decode(fields[1]), cjson.decode(fields[2])
    for _, pair in ipairs(held) do
      pair[2] = tonumber(pair[2])
      if pair[1] == epoch then pair[2] = math.max(0, pair[2] - amount) end
    end

    local paid = 0
    for _, grant in ipairs(lapsing) do
      grant[2] = tonumber(grant[2])
      if grant[3] >= epoch and paid < charged then
        local paid_from_grant = math.min(grant[2], charged - paid)
        grant[2] = grant[2] - paid_from_grant
        paid = paid + paid_from_grant
      end
    end

    local expired = to_amount(fields[3])
    local first = 1
    while first <= #lapsing do
      local last, through = first, lapsing[first][3]
      while last < #lapsing and lapsing[last + 1][3] == through do last = last + 1 end
      local excess = 0
      for i = 1, last do excess = excess + lapsing[i][2] end
      for _, pair in ipairs(held) do
        if pair[1] <= through then excess = excess - pair[2] end
      end
      for i = last, 1, -1 do
        if excess <= 0 then break end
        local taken_back = math.min(lapsing[i][2], excess)
        if taken_back > 0 then
          lapsing[i][2] = lapsing[i][2] - taken_back
          excess = excess - taken_back
          expired = expired + taken_back
          append_entry({ 'type', 'expire', 'id', lapsing[i][1], 'amount', amount_string(taken_back) })
        end
      end
      first = last + 1
    end

    local left, left_held = {}, {}
    for _, grant in ipairs(lapsing) do
      if grant[2] > 0 then left[#left + 1] = { grant[1], amount_string(grant[2]), grant[3] } end
    end
    for _, pair in ipairs(held) do
      if pair[2] > 0 then left_held[#left_held + 1] = { pair[1], amount_string(pair[2]) } end
    end
    if #left == 0 then
      redis.call('HDEL', ACCT, 'lapsing', 'lapsingHeld')
    else
      redis.call('HSET', ACCT, 'lapsing', cjson.encode(left), 'lapsingHeld', cjson.encode(left_held))
    end
    redis.call('HSET', ACCT, 'expired', amount_string(expired))
    if paid > 0 and fields[4] then redis.call('HSET', ACCT, 'attributed', amount_string(tonumber(fields[4]) + paid)) end
    return paid
  end

  return attribute_charges, write_expiring, lapse_grants, settle_cover
end

-- Settles up to `limit` members of the expiry index whose score is at or
-- before `now`, lowest score first. A member with an open hold is an expired
-- hold: it is charged at the held amount when the upstream answered, else
-- released, and its record is kept until `now + retention` (ms). A member
-- without an open hold is a settled record whose retention ended: the record
-- and the member are removed.
-- Returns the counts released, charged and removed, and how many members it read.
local function settle_expired(now, limit, retention)
  local ids = redis.call('ZRANGEBYSCORE', HEXP, '-inf', amount_string(now), 'LIMIT', '0', limit)
  local released, charged, removed = 0, 0, 0
  if #ids == 0 then return 0, 0, 0, 0 end
  local deadline = amount_string(now + tonumber(retention))
  for _, id in ipairs(ids) do
    local hold = read_hold(id)
    if hold then
      settle_hold(id, hold, deadline)
      local done = { charged = 0, released = 0, day = hold.day, month = hold.month, fingerprint = hold.fingerprint }
      if hold.answered then
        add('spent', hold.amount, hold.amount_text)
        -- The call's usage, and so its provider cost, is not known, so the margin leaves this charge out until a late commit prices it.
        add('chargedWithoutCost', hold.amount, hold.amount_text)
        append_entry({ 'type', 'expire-charge', 'id', id, 'amount', hold.amount_text,
          'charged', hold.amount_text, 'providerCost', '0' })
        done.state, done.charged = 'expired_charged', hold.amount
        charged = charged + 1
      else
        add_to_periods(hold.day, hold.month, -hold.amount)
        done.state, done.released = 'expired', hold.amount
        released = released + 1
      end
      if hold.epoch then
        local _, _, _, settle_cover = grant_expiry_helpers()
        local paid = settle_cover(hold.epoch, hold.amount, done.charged)
        -- An expire-charge keeps in `released` the part that lapsed grants paid, for a late commit that lowers it.
        if hold.answered then done.released = paid end
      end
      write_done(id, done)
    else
      redis.call('HDEL', DONE, id)
      redis.call('ZREM', HEXP, id)
      removed = removed + 1
    end
  end
  return released, charged, removed, #ids
end

