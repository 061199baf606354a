-- Reads the wallet's totals and its count of open holds in one step.
local totals = redis.call('HMGET', ACCT, 'granted', 'spent', 'reserved', 'providerCost', 'closed', 'expired', 'chargedWithoutCost')
return {
  totals[1] or '0', totals[2] or '0', totals[3] or '0', totals[4] or '0', totals[5] or '0',
  redis.call('HLEN', HOLDS), totals[6] or '0', totals[7] or '0',
}
