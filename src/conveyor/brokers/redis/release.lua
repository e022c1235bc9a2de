-- Hand a job back for immediate redelivery (graceful stop), fenced; not counted as a delivery.
-- KEYS: job, done, unique, queues, then the queue's 18 keys. ARGV[5]: token.
allow_oom()
local key = KEYS[1]
local q = qkeys(5)
local job = load_job(key)
local token = ARGV[5]
local fence = settle(job, token)
if fence ~= 'owned' then return fence == 'again' and 1 or 0 end
local id = string.sub(key, #JOB_PREFIX + 1)
local deliveries = math.max(tonumber(job.deliveries) - 1, 0)
if job.cancel == '1' then
  end_cancelled(q, key, job, id, KEYS[3], {'settled_by', token, 'deliveries', deliveries})
  return 1
end
local prio = tonumber(job.priority)
drop_entry(q.s[prio], job.sid, key)
redis.call('ZREM', q.running, id)
push_ready(q, key, id, prio, {'deliveries', deliveries, 'updated_at', NOW, 'settled_by', token})
return 1
