-- Set an admission's amount to what it really used (refund or charge the difference).
-- KEYS: the hash of amounts, the running sum. ARGV: admission id, real amount.
-- An admission that has left the window already is not touched.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
  return 0
end
local delta = tonumber(ARGV[2]) - tonumber(old)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[2], delta)
return delta
