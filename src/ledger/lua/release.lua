-- Returns the whole hold of a request that the upstream did not serve.
-- ARGV: requestId, end of the settled record's retention (epoch ms).
local id = ARGV[1]

local open = read_hold(id)
if open then
  settle_hold(id, open, ARGV[2])
  add_to_periods(open.day, open.month, -open.amount)
  if open.epoch then
    local _, _, _, settle_cover = grant_expiry_helpers()
    settle_cover(open.epoch, open.amount, 0)
  end
  write_done(id, {
    state = 'released', charged = 0, released = open.amount,
    day = open.day, month = open.month, fingerprint = open.fingerprint,
  })
  return { 'released', open.amount_text }
end

local done = read_done(id)
if not done then return { 'not_found' } end
if done.state == 'committed' or done.state == 'expired_charged' then return { 'already_committed' } end
if done.state == 'expired' then
  -- The sweeper already returned the hold. Recording the release makes a
  -- later commit a conflict and lets a retry reserve under the same id.
  done.state = 'released'
  write_done(id, done)
  redis.call('ZADD', HEXP, ARGV[2], id)
end
return { 'released', amount_string(done.released) }
