-- Helpers shared by every ledger script; the loader puts this file in front
-- of each script. Every script receives the same six keys of one wallet, in
-- this order. The keys share one hash tag, so a script runs on one shard of
-- a Redis Cluster.
local ACCT, HOLDS, HEXP, DONE, LOG, GRANTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

-- Amounts are integers of at most 2^53 nano-units, which Lua numbers
-- (doubles) represent exactly. They cross the script boundary as decimal
-- strings, because tostring() would print large numbers as 1e+15.
local function amount_string(n)
  if n == 0 then return '0' end
  return string.format('%.0f', n)
end

local function to_amount(value)
  return tonumber(value) or 0
end

-- HINCRBY adds exactly in 64-bit integers on the server.
local function add(field, delta)
  if delta ~= 0 then redis.call('HINCRBY', ACCT, field, amount_string(delta)) end
end

-- Adds `delta` to the day and month counters that the spend caps read.
local function add_to_periods(day, month, delta)
  add(day, delta)
  add(month, delta)
end

local function server_time_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- Splits `packed` at '|' into `count` fields. The last field keeps any '|'
-- it contains, so it may hold a caller's fingerprint.
local function split(packed, count)
  local fields, start = {}, 1
  for i = 1, count - 1 do
    local stop = string.find(packed, '|', start, true)
    fields[i] = string.sub(packed, start, stop - 1)
    start = stop + 1
  end
  fields[count] = string.sub(packed, start)
  return fields
end

-- An open hold is stored as amount|units|expiresAtMs|answered|day|month|fingerprint.
local function read_hold(id)
  local packed = redis.call('HGET', HOLDS, id)
  if not packed then return nil end
  local f = split(packed, 7)
  return {
    amount = tonumber(f[1]), units = f[2], expires = tonumber(f[3]), answered = f[4] == '1',
    day = f[5], month = f[6], fingerprint = f[7],
  }
end

local function write_hold(id, hold)
  redis.call('HSET', HOLDS, id, table.concat({
    amount_string(hold.amount), hold.units, amount_string(hold.expires), hold.answered and '1' or '0',
    hold.day, hold.month, hold.fingerprint,
  }, '|'))
end

-- Deletes an open hold and returns its amount to the wallet's available funds.
local function remove_hold(id, hold)
  redis.call('HDEL', HOLDS, id)
  redis.call('ZREM', HEXP, id)
  add('reserved', -hold.amount)
end

-- A settled request is stored as state|charged|released|day|month|fingerprint,
-- where state is committed, released, expired or expired_charged.
local function read_done(id)
  local packed = redis.call('HGET', DONE, id)
  if not packed then return nil end
  local f = split(packed, 6)
  return {
    state = f[1], charged = tonumber(f[2]), released = tonumber(f[3]),
    day = f[4], month = f[5], fingerprint = f[6],
  }
end

local function write_done(id, done)
  redis.call('HSET', DONE, id, table.concat({
    done.state, amount_string(done.charged), amount_string(done.released), done.day, done.month, done.fingerprint,
  }, '|'))
end

local function append_entry(fields)
  redis.call('XADD', LOG, '*', unpack(fields))
end

-- Settles up to `limit` holds whose expiry is at or before `now`, earliest
-- first: charged at the held amount when the upstream answered, else released.
-- Returns the counts released and charged, and how many expiry entries it read.
local function settle_expired(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', HEXP, '-inf', amount_string(now), 'LIMIT', 0, limit)
  local released, charged = 0, 0
  for _, id in ipairs(ids) do
    local hold = read_hold(id)
    if hold then
      remove_hold(id, hold)
      local done = { charged = 0, released = 0, day = hold.day, month = hold.month, fingerprint = hold.fingerprint }
      if hold.answered then
        add('spent', hold.amount)
        append_entry({ 'type', 'expire-charge', 'id', id, 'amount', amount_string(hold.amount),
          'charged', amount_string(hold.amount), 'providerCost', '0' })
        done.state, done.charged = 'expired_charged', hold.amount
        charged = charged + 1
      else
        add_to_periods(hold.day, hold.month, -hold.amount)
        done.state, done.released = 'expired', hold.amount
        released = released + 1
      end
      write_done(id, done)
    else
      redis.call('ZREM', HEXP, id)
    end
  end
  return released, charged, #ids
end

