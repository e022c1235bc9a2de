-- Cancel a job. KEYS: job, done, unique, queues, then its queue's 18 keys. ARGV[5]: queue
-- the caller read from the job (the keys it passed). A pending job is removed at once; a
-- running one is flagged (its worker sees it at the next renewal). Carrying an event
-- (common.lua carried: ARGV[6]), it is published if a pending job is cancelled here.
-- Returns the status afterwards, 'missing', or 'moved' (queue changed: read it again).
allow_oom()
local key = KEYS[1]
local q = qkeys(5)
local job = load_job(key)
if not job then return 'missing' end
if job.queue ~= ARGV[5] then return 'moved' end
local id = string.sub(key, #JOB_PREFIX + 1)
if job.status == 'running' then
  redis.call('HSET', key, 'cancel', '1')
  return 'running'
end
if job.status == 'queued' then
  -- Never delivered (not pending); its payload, if the entry carries it, stays on record.
  drop_entry(q.s[tonumber(job.priority)], job.sid, key)
elseif job.status == 'scheduled' then
  redis.call('ZREM', q.scheduled, id)
  forget_dependencies(job, id)
else
  return job.status
end
terminate(q, key, job, id, 'cancelled', CANCELLED_TTL_MS, nil, 'sid', '', 'reason',
  CANCELLED_PENDING)
release_key(KEYS[3], job, id)
local cap = carried()
if cap then publish(cap, {ARGV[6]}) end
return 'cancelled'
