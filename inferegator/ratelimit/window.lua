-- Sliding-window admission for all of one API key's limits, all or nothing, in one call.
--
-- For limit i, KEYS[3i-2] is a sorted set (member: admission id, score: time in ms),
-- KEYS[3i-1] a hash (admission id -> amount) and KEYS[3i] the window's running sum.
-- ARGV: window_ms, admission id, then per limit: its maximum and the amount asked.
-- Time comes from Redis itself, so replicas with skewed clocks still agree.
-- Returns {admitted (1|0), retry_after_ms, now_ms, then per limit: used, oldest_ms}.
-- retry_after_ms is -1 when an amount can never fit (it exceeds the limit itself).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local member = ARGV[2]
local n = #KEYS / 3
local used, oldest = {}, {}
local admitted, retry = 1, 0

for i = 1, n do
  local z, h, s = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local limit, amount = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now - window)
  if #expired > 0 then
    local freed = 0
    for j = 1, #expired do
      freed = freed + (tonumber(redis.call('HGET', h, expired[j])) or 0)
      redis.call('HDEL', h, expired[j])
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
    redis.call('DECRBY', s, freed)
  end
  used[i] = tonumber(redis.call('GET', s) or '0')
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  oldest[i] = first[2] and tonumber(first[2]) or -1
  if used[i] + amount > limit then
    admitted = 0
    if amount > limit then
      retry = -1
    elseif retry >= 0 then
      -- wait until enough of the oldest admissions have left the window; read them in
      -- slices, so a refusal on a long window costs what it needs, not the whole window
      local need, freed, start, found = used[i] + amount - limit, 0, 0, false
      while not found do
        local entries = redis.call('ZRANGE', z, start, start + 63, 'WITHSCORES')
        if #entries == 0 then break end
        for j = 1, #entries, 2 do
          freed = freed + (tonumber(redis.call('HGET', h, entries[j])) or 0)
          if freed >= need then
            retry = math.max(retry, tonumber(entries[j + 1]) + window - now)
            found = true
            break
          end
        end
        start = start + 64
      end
    end
  end
end

if admitted == 1 then
  for i = 1, n do
    local z, h, s = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
    local amount = tonumber(ARGV[2 + 2 * i])
    redis.call('ZADD', z, now, member)
    redis.call('HSET', h, member, amount)
    redis.call('INCRBY', s, amount)
    used[i] = used[i] + amount
    if oldest[i] < 0 then oldest[i] = now end
    redis.call('PEXPIRE', z, window * 2)
    redis.call('PEXPIRE', h, window * 2)
    redis.call('PEXPIRE', s, window * 2)
  end
end

local out = {admitted, retry, now}
for i = 1, n do
  out[#out + 1] = used[i]
  out[#out + 1] = oldest[i]
end
return out
