-- One page of the jobs in an ended status across queues, read by rank (Broker.entries):
-- newest record expiry first (the index's score; for one result TTL, the order of when
-- they ended), ties by job id, highest first, as ZREVRANGE orders them. Live entries only
-- (scored above NOW). The cost grows with the log of the index's size and of the expiry
-- range, not with the offset: the page's first entry is found by a binary search on the
-- score with ZCOUNT (how many score above a value), then each index is read by rank from
-- there. Only the jobs that share the page's first millisecond of expiry (ended together,
-- with one TTL) are read through up to the offset: a batch finished in one call, at most.
-- KEYS: the status index of each queue ({P}:q:<q>:<status>). ARGV[5] offset, ARGV[6]
-- limit. Returns the page's job ids, in order.
local offset, limit = tonumber(ARGV[5]), tonumber(ARGV[6])

local function ms(t) return string.format('%.0f', t) end

-- How many live entries of every index score above `t`.
local function above(t)
  local n = 0
  for i = 1, #KEYS do n = n + redis.call('ZCOUNT', KEYS[i], '(' .. ms(t), '+inf') end
  return n
end

local lo = math.floor(NOW)
if above(lo) <= offset then return {} end  -- the offset is past the last live entry
local hi = lo
for i = 1, #KEYS do
  local top = redis.call('ZREVRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2]
  if top and math.ceil(tonumber(top)) > hi then hi = math.ceil(tonumber(top)) end
end
-- above(lo) > offset >= above(hi): the entry at `offset` scores in (t - 1, t] for the
-- smallest whole t with above(t) <= offset.
while hi - lo > 1 do
  local mid = math.floor((lo + hi) / 2)
  if above(mid) <= offset then hi = mid else lo = mid end
end
local skip = offset - above(hi)
-- Every index from its first entry at or below hi, by rank: the page is among the first
-- skip + limit of each.
local found = {}
for i = 1, #KEYS do
  local start = redis.call('ZCOUNT', KEYS[i], '(' .. ms(hi), '+inf')
  local got = redis.call('ZREVRANGE', KEYS[i], start, start + skip + limit - 1, 'WITHSCORES')
  for j = 1, #got, 2 do
    local score = tonumber(got[j + 1])
    if score > NOW then found[#found + 1] = {score, got[j]} end
  end
end
table.sort(found, function(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] > b[2]
end)
local page = {}
for j = skip + 1, math.min(#found, skip + limit) do page[#page + 1] = found[j][2] end
return page
