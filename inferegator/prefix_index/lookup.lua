-- For each runtime, the number of leading pages of a prompt it probably holds.
-- KEYS: per runtime, its page set (sorted set: page hash -> counter when last sent)
--       and its counter (pages sent there that it did not hold), in that order.
-- ARGV: the page count n, each runtime's capacity in pages, then the n page hashes.
-- A page is held while fewer than capacity new pages were sent after it (LRU). Pages
-- are sent as whole prefixes, so the held ones are a prefix: a binary search finds it.
local n = tonumber(ARGV[1])
local runtimes = #KEYS / 2
local held = {}
for r = 1, runtimes do
  local pages, counter = KEYS[2 * r - 1], KEYS[2 * r]
  local oldest = tonumber(redis.call('GET', counter) or '0') - tonumber(ARGV[1 + r])
  local lo, hi = 0, n
  while lo < hi do
    local mid = math.floor((lo + hi + 1) / 2)
    local sent = redis.call('ZSCORE', pages, ARGV[1 + runtimes + mid])
    if sent and tonumber(sent) > oldest then lo = mid else hi = mid - 1 end
  end
  held[r] = lo
end
return held
