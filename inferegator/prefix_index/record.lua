-- A prompt's pages were sent to one runtime: count the ones it did not hold, and mark
-- them as just sent; drop pages aged out of its capacity once the set is twice that.
-- KEYS: the runtime's page set and counter (as lookup.lua).
-- ARGV: how many leading pages it held, its capacity in pages, the keys' lifetime in
--       seconds, then the page hashes.
local held, capacity, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = redis.call('INCRBY', KEYS[2], #ARGV - 3 - held)
-- The held pages and the first new one count as sent now; each later page one step
-- earlier: a radix cache evicts a path's last pages (its leaves) first.
local batch = {}
for i = 4, #ARGV do
  batch[#batch + 1] = now - math.max(0, i - 4 - held)
  batch[#batch + 1] = ARGV[i]
  if #batch >= 1000 then
    redis.call('ZADD', KEYS[1], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('ZADD', KEYS[1], unpack(batch)) end
if redis.call('ZCARD', KEYS[1]) > 2 * capacity then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - capacity)
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return now
