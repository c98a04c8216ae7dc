-- What the windows of some limits hold now, without admitting anything: one call.
--
-- KEYS: as window.lua, per limit i: KEYS[3i-2] the sorted set (admission id -> time in
-- ms), KEYS[3i-1] the hash (admission id -> amount), KEYS[3i] the running sum.
-- ARGV: window_ms. Time comes from Redis itself, as in window.lua.
-- Admissions that have left the window are removed (as window.lua does) so the sum is
-- right; nothing is ever added, and no key that does not exist is created.
-- Returns {1, 0, now_ms, then per limit: used, oldest_ms (-1: none)}, window.lua's shape.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local out = {1, 0, now}

for i = 1, #KEYS / 3 do
  local z, h, s = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now - window)
  if #expired > 0 then
    local freed = 0
    for j = 1, #expired do
      freed = freed + (tonumber(redis.call('HGET', h, expired[j])) or 0)
      redis.call('HDEL', h, expired[j])
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
    if redis.call('EXISTS', s) == 1 then  -- DECRBY would create a missing sum
      redis.call('DECRBY', s, freed)
    end
  end
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  out[#out + 1] = tonumber(redis.call('GET', s) or '0')
  out[#out + 1] = first[2] and tonumber(first[2]) or -1
end
return out
