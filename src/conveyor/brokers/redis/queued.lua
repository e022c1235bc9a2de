-- The queued (not yet delivered) jobs of some queues, read from their streams: the entries
-- after the group's last delivered id. A delivered entry stays pending until its job ends
-- or goes back in line, and every script that acks an entry deletes it, so a stream holds
-- queued entries and pending ones only: queued = length - pending.
-- KEYS: the 10 priority streams (0..9) of each queue. ARGV[5]: how many jobs to list, in
-- the order fetch hands them out (highest priority first, then oldest entry first across
-- the queues; 0: the counts only).
-- Returns {count per queue, jobs}; a job is {id, priority, entry id}; an entry written
-- without a job id counts, as raw-<entry>.
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
      local from = info and '(' .. info['last-delivered-id'] or '-'
      for _, e in ipairs(redis.call('XRANGE', stream, from, '+', 'COUNT', LIMIT)) do
        found[#found + 1] = {job_of(e[1], e[2]), p, e[1]}
      end
    end
  end
  counts[i] = n
end
table.sort(found, function(a, b)  -- as fetch hands them out (fetch.lua read_level)
  if a[2] ~= b[2] then return a[2] > b[2] end
  if a[3] ~= b[3] then return sid_less(a[3], b[3]) end
  return a[1] < b[1]
end)
local jobs = {}
for i = 1, math.min(LIMIT, #found) do jobs[i] = found[i] end
return {counts, jobs}
