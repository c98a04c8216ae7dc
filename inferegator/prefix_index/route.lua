-- Choose a runtime for one prompt and record the choice, in one step, so that every
-- worker and replica sharing this Redis sees each choice before making the next one.
-- KEYS: per runtime, its pages (hash: page hash -> counter when last sent; field "n",
--       the counter: bytes of prompt text sent there that it did not hold; fields "r"
--       and "t", the requests routed there lately, decayed to Redis time t) and its
--       in-flight set (sorted set: request id -> lease end, Redis time; those past their
--       lease are dropped now and then, below), in that order.
-- ARGV: 1 the page count n, 2 the request id, 3 its lease (s), 4 the keys' lifetime (s),
--       5 bytes per page, 6 bytes per token, 7 a queued request's wait in tokens,
--       8 balance epsilon, 9 spread weight, 10 the recent requests' half-life (s),
--       then per runtime its cache's capacity (bytes of text), running slots and
--       tie-break number,
--       then the n page hashes as one string of 8 bytes each, the prompt's own end
--       hash and the previous turn's end hash (8 bytes each, or empty: none) and the
--       bytes of text that end covers (pages.Ends).
-- Returns the runtimes best first (1-based), then per runtime the pages it held, its
-- requests in flight, its recent requests (a string: a decayed count) and the bytes of
-- the prompt it held (its pages' or up to the previous turn's end, if it holds that).
-- stores.rank is this choice in Python (the memory store's).
local n, id, lease, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local page_chars, chars_per_token = tonumber(ARGV[5]), tonumber(ARGV[6])
local queue_cost, epsilon = tonumber(ARGV[7]), tonumber(ARGV[8])
local spread_weight, half_life = tonumber(ARGV[9]), tonumber(ARGV[10])
local count = #KEYS / 2
local hashes = ARGV[11 + 3 * count]
local own_end, previous = ARGV[12 + 3 * count], ARGV[13 + 3 * count]
local previous_chars = tonumber(ARGV[14 + 3 * count])
if previous == '' then previous = 'n' end  -- asks for the counter again: not looked at
local page = {}
for i = 1, n do page[i] = string.sub(hashes, 8 * i - 7, 8 * i) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
-- The text the first h cuts cover, in bytes (pages.covered_chars): four cuts inside the
-- first page, at 1/16, 1/8, 1/4 and 1/2 of it, then one per page.
local function covered(h)
  if h == 0 then return 0 end
  if h <= 4 then return math.floor(page_chars / 2 ^ (5 - h)) end
  return page_chars * (h - 4)
end
local held, held_chars, loads, counters, recent, total, all_recent = {}, {}, {}, {}, {}, 0, 0
for r = 1, count do
  local pages, flight = KEYS[2 * r - 1], KEYS[2 * r]
  -- A page is held while less than capacity (bytes) of new text was sent after it (LRU).
  -- Pages are sent as whole prefixes, so the held ones are a prefix: a binary search,
  -- after the first page, asked for with the counters (most runtimes hold none of a prompt).
  local lo, hi = 0, n
  local first = redis.call('HMGET', pages, 'n', 'r', 't', page[1] or 'n', previous)
  counters[r] = tonumber(first[1] or '0')
  local since = now - tonumber(first[3] or now)
  recent[r] = tonumber(first[2] or '0') * 0.5 ^ (math.max(0, since) / half_life)
  all_recent = all_recent + recent[r]
  local oldest = counters[r] - tonumber(ARGV[8 + 3 * r])
  if n > 0 and first[4] and tonumber(first[4]) > oldest then lo = 1 else hi = 0 end
  while lo < hi do
    local mid = math.floor((lo + hi + 1) / 2)
    local sent = redis.call('HGET', pages, page[mid])
    if sent and tonumber(sent) > oldest then lo = mid else hi = mid - 1 end
  end
  held[r] = lo
  local chars = covered(lo)
  if previous_chars > chars and previous ~= 'n' and first[5] and tonumber(first[5]) > oldest then
    chars = previous_chars
  end
  held_chars[r] = chars
  loads[r] = redis.call('ZCARD', flight)
  total = total + loads[r]
end
-- Expected prefill against the others, in tokens: a mean prefill per request that would
-- queue past the runtime's running slots, a share (1 / slots) of one per request running
-- there and spread_weight such shares per recent request above the mean, less the
-- tokens it holds; runtimes at the fairness cap go last.
-- The recent requests count only where the longest prefix is held by more than one
-- runtime (or none): a conversation's history is never outweighed by them.
local bound = math.ceil((1 + epsilon) * (total + 1) / count - 1e-9)
local mean_recent = all_recent / count
local most, holders = -1, 0
for r = 1, count do
  if held_chars[r] > most then
    most, holders = held_chars[r], 1
  elseif held_chars[r] == most then
    holders = holders + 1
  end
end
if holders < 2 then spread_weight = 0 end
local keyed, order = {}, {}
for r = 1, count do
  local slots = tonumber(ARGV[9 + 3 * r])
  local queued = math.max(0, loads[r] + 1 - slots)
  local busy = loads[r] + spread_weight * (recent[r] - mean_recent)
  local cost = queued * queue_cost + busy * queue_cost / slots
  keyed[r] = {loads[r] >= bound and 1 or 0, cost - held_chars[r] / chars_per_token,
              loads[r], tonumber(ARGV[10 + 3 * r]), r}
  order[r] = r
end
table.sort(order, function(a, b)
  local x, y = keyed[a], keyed[b]
  for i = 1, 4 do
    if x[i] ~= y[i] then return x[i] < y[i] end
  end
  return a < b
end)
-- Record the chosen runtime's pages: its counter moves by the bytes it did not hold; the
-- held pages and the first new one count as sent now, each later one as sent its
-- distance earlier (a radix cache evicts a path's leaves first).
local chosen = order[1]
local pages, flight = KEYS[2 * chosen - 1], KEYS[2 * chosen]
local have, capacity = held[chosen], tonumber(ARGV[8 + 3 * chosen])
local added = covered(n) - covered(have)
local sent = counters[chosen] + added
local first_new = covered(have + 1)
-- One command over many arguments, at most 1000 at a time (unpack's stack is bounded).
local function in_batches(command, key, items)
  for from = 1, #items, 1000 do
    redis.call(command, key, unpack(items, from, math.min(#items, from + 999)))
  end
end
local now_sent = tostring(sent)  -- converted once: most pages take this value
local fields = {'n', now_sent, 'r', tostring(recent[chosen] + 1), 't', tostring(now)}
local value = now_sent
for i = 1, n do
  local distance = covered(i) - first_new
  value = distance > 0 and sent - distance or now_sent
  fields[#fields + 1] = page[i]
  fields[#fields + 1] = value
end
if own_end ~= '' then  -- the prompt's end ages with its last page
  fields[#fields + 1] = own_end
  fields[#fields + 1] = value
end
in_batches('HSET', pages, fields)
-- Each time the counter passes a multiple of the capacity, drop the pages aged out (a
-- scan of the hash, so once per capacity's worth of new pages).
if math.floor(sent / capacity) > math.floor((sent - added) / capacity) then
  local all, gone, oldest = redis.call('HGETALL', pages), {}, sent - capacity
  for i = 1, #all, 2 do
    if #all[i] == 8 and tonumber(all[i + 1]) <= oldest then gone[#gone + 1] = all[i] end
  end
  in_batches('HDEL', pages, gone)
end
redis.call('ZADD', flight, now + lease, id)
-- Keys unused for the lifetime go; refreshed on every 16th call (by the clock's
-- microseconds), and when a key was just made. Every runtime's requests past their lease
-- (a replica died before releasing them) are dropped on those calls too.
if sent == added or tonumber(clock[2]) % 16 == 0 then
  for r = 1, count do redis.call('ZREMRANGEBYSCORE', KEYS[2 * r], '-inf', now) end
  for _, key in ipairs({pages, flight}) do redis.call('EXPIRE', key, ttl) end
end
local reply = {}
for r = 1, count do reply[r] = order[r] end
for r = 1, count do reply[count + r] = held[r] end
for r = 1, count do reply[2 * count + r] = loads[r] end
for r = 1, count do reply[3 * count + r] = tostring(recent[r]) end
for r = 1, count do reply[4 * count + r] = held_chars[r] end
return reply
