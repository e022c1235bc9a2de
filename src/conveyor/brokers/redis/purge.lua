-- Delete up to ARGV[5] queued and scheduled jobs of one queue (the client loops, so a huge
-- queue never blocks Redis in one long script). KEYS: the queue's 18 keys, then unique.
-- Queued jobs are the entries after each stream's last delivered id (see queued.lua).
-- A deleted job's dependents are counted down as if it had ended (release_dependents); one
-- released into this queue's streams after the loop below passed them is deleted by the
-- next call, so a call that released any says more may remain. Whoever waits for a deleted
-- job is woken and finds no record (as delete.lua).
-- Returns {deleted, 1 if more may remain else 0}.
local q = qkeys(1)
local unique = KEYS[QK + 1]
local limit = tonumber(ARGV[5])
local deleted = 0
local seen = 0
local released = false

local function drop(id, status, sid)
  local key = JOB_PREFIX .. id
  local job = load_job(key)
  if job and job.status == status and (sid == nil or job.sid == sid) then
    release_key(unique, job, id)
    if job.deps == '1' then
      release_dependents(job, id)
      released = true
    end
    forget_dependencies(job, id)
    redis.call('DEL', key)
    if job.waited then notify(id) else redis.call('DEL', DONE_PREFIX .. id) end
    deleted = deleted + 1
  end
end

for p = 0, 9 do
  local info = group_info(q.s[p])  -- nil: no stream (XRANGE finds nothing) or no group
  local from = info and '(' .. info['last-delivered-id'] or '-'
  for _, e in ipairs(redis.call('XRANGE', q.s[p], from, '+', 'COUNT', limit - seen)) do
    seen = seen + 1
    redis.call('XDEL', q.s[p], e[1])  -- never delivered: not pending
    local f = e[2]
    if f[1] == 'job' then drop(f[2], 'queued', e[1]) else deleted = deleted + 1 end
  end
  if seen >= limit then return {deleted, 1} end
end
for _, id in ipairs(redis.call('ZRANGE', q.scheduled, 0, limit - seen - 1)) do
  seen = seen + 1
  redis.call('ZREM', q.scheduled, id)
  drop(id, 'scheduled', nil)
end
return {deleted, (seen >= limit or released) and 1 or 0}
