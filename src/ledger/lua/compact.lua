-- Folds up to `limit` of the oldest stream entries, those with ids up to the
-- given one, into the wallet's checkpoint and deletes them. Only entries
-- from the start of the stream are folded, so the checkpoint always covers a
-- prefix of the wallet's history and verify can replay the rest after it.
-- KEYS[7]: the wallet's checkpoint hash, with the fields granted, spent,
-- expired, providerCost and entries (sums and count of the folded entries)
-- and lastId (the id of the last folded entry).
-- ARGV: the largest id to fold, limit.
-- Returns {folded, granted, spent, expired, providerCost, entries, lastId},
-- the last six as the checkpoint stores them ('' when it has none).
local CHECKPOINT = KEYS[7]
local entries = redis.call('XRANGE', LOG, '-', ARGV[1], 'COUNT', ARGV[2])

if #entries > 0 then
  -- Sums are kept in Lua numbers while they stay exact (at most 2^53 in
  -- magnitude), and are added to the checkpoint with HINCRBY, which adds in
  -- 64-bit integers, before they could pass that bound.
  local sums = { granted = 0, spent = 0, expired = 0, providerCost = 0 }
  local function add_to_sum(field, value)
    if value == 0 then return end
    -- Written as a difference, because the sum itself may round.
    if math.abs(sums[field]) > 2^53 - math.abs(value) then
      redis.call('HINCRBY', CHECKPOINT, field, amount_string(sums[field]))
      sums[field] = 0
    end
    sums[field] = sums[field] + value
  end

  for _, entry in ipairs(entries) do
    local fields = entry[2]
    local entry_type, amount, provider_cost = nil, 0, 0
    for j = 1, #fields, 2 do
      local name = fields[j]
      if name == 'type' then entry_type = fields[j + 1]
      elseif name == 'amount' then amount = tonumber(fields[j + 1]) or 0
      elseif name == 'providerCost' then provider_cost = tonumber(fields[j + 1]) or 0 end
    end
    if entry_type == 'grant' then add_to_sum('granted', amount)
    elseif entry_type == 'expire' then add_to_sum('expired', amount)
    else add_to_sum('spent', amount) end
    add_to_sum('providerCost', provider_cost)
  end

  for field, sum in pairs(sums) do
    if sum ~= 0 then redis.call('HINCRBY', CHECKPOINT, field, amount_string(sum)) end
  end
  local last = entries[#entries][1]
  redis.call('HINCRBY', CHECKPOINT, 'entries', #entries)
  redis.call('HSET', CHECKPOINT, 'lastId', last)

  -- XTRIM MINID drops whole stream nodes, which costs far less than
  -- deleting the ids one by one with XDEL. Every entry below the id after
  -- `last` was folded above, because the range started at the stream's first
  -- entry. Sequences from XADD '*' count entries within one millisecond, so
  -- they stay far below 2^53 and the sum is exact.
  local ms, sequence = string.match(last, '^(%d+)-(%d+)$')
  redis.call('XTRIM', LOG, 'MINID', ms .. '-' .. amount_string(tonumber(sequence) + 1))
end

local checkpoint = redis.call('HMGET', CHECKPOINT, 'granted', 'spent', 'expired', 'providerCost', 'entries', 'lastId')
for i = 1, 6 do checkpoint[i] = checkpoint[i] or '' end
return { #entries, checkpoint[1], checkpoint[2], checkpoint[3], checkpoint[4], checkpoint[5], checkpoint[6] }
