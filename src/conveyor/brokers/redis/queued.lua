-- The queued (not yet delivered) jobs of some queues, read from their streams: the entries
-- after the group's last delivered id. A delivered entry stays pending until its job ends
-- or goes back in line, and every script that acks an entry deletes it, so a stream holds
-- queued entries and pending ones only: queued = length - pending.
-- KEYS: the 10 priority streams (0..9) of each queue. ARGV[5]: how many ids to return,
-- newest first across the queues (0: the counts only).
-- Returns {count per queue, ids}; an entry written without a job id counts, as raw-<entry>.
local LIMIT = tonumber(ARGV[5])
local counts, found = {}, {}
for i = 1, #KEYS / 10 do
  local n = 0
  for p = 0, 9 do
    local stream = KEYS[(i - 1) * 10 + p + 1]
    local info = group_info(stream)
    local length = redis.call('XLEN', stream)
    n = n + length - (info and tonumber(info.pending) or 0)
    if LIMIT > 0 and length > 0 then
      local to = info and '(' .. info['last-delivered-id'] or '-'
      for _, e in ipairs(redis.call('XREVRANGE', stream, '+', to, 'COUNT', LIMIT)) do
        local f = e[2]
        found[#found + 1] = {e[1], f[1] == 'job' and f[2] or 'raw-' .. e[1]}
      end
    end
  end
  counts[i] = n
end
table.sort(found, function(a, b) return sid_less(b[1], a[1]) end)
local ids = {}
for i = 1, math.min(LIMIT, #found) do ids[i] = found[i][2] end
return {counts, ids}
