-- Delete up to ARGV[5] queued and scheduled jobs of one queue (the client loops, so a huge
-- queue never blocks Redis in one long script). KEYS: the queue's 19 keys, then unique.
-- Returns {deleted, 1 if more may remain else 0}.
local q = qkeys(1)
local unique = KEYS[QK + 1]
local limit = tonumber(ARGV[5])
local deleted = 0
local seen = 0
for _, index in ipairs({q.queued, q.scheduled}) do
  for _, id in ipairs(redis.call('ZRANGE', index, 0, limit - seen - 1)) do
    seen = seen + 1
    redis.call('ZREM', index, id)
    local key = JOB_PREFIX .. id
    local job = load_job(key)
    if job and (job.status == 'queued' or job.status == 'scheduled') then
      if job.status == 'queued' then redis.call('XDEL', q.s[tonumber(job.priority)], job.sid) end
      release_key(unique, job, id)
      redis.call('DEL', key, DONE_PREFIX .. id)
      deleted = deleted + 1
    end
  end
  if seen >= limit then return {deleted, 1} end
end
return {deleted, 0}
