-- Hand a job back for immediate redelivery (graceful stop), fenced; not counted as a delivery.
-- KEYS: job, done, unique, queues, then the queue's 19 keys. ARGV[5]: token.
local key = KEYS[1]
local q = qkeys(5)
local job = load_job(key)
-- A retry of this very call (its reply was lost and the client sent it again) took effect
-- the first time: say so, rather than report a refusal.
if job and ARGV[5] ~= '' and job.settled_by == ARGV[5] and job.status ~= 'running' then
  return 1
end
if not owned(job, ARGV[5]) then return 0 end
redis.call('HSET', key, 'settled_by', ARGV[5])
local id = string.sub(key, #JOB_PREFIX + 1)
if job.cancel == '1' then
  end_cancelled(q, key, job, id, KEYS[3])
  return 1
end
local prio = tonumber(job.priority)
drop_entry(q.s[prio], job.sid)
redis.call('ZREM', q.running, id)
local deliveries = math.max(tonumber(job.deliveries) - 1, 0)
redis.call('HSET', key, 'deliveries', deliveries, 'updated_at', NOW)
push_ready(q, key, id, prio)
return 1
