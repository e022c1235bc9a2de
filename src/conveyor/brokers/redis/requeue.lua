-- Put a failed or dead job back on its queue. KEYS: job, done, unique, queues, then its
-- queue's 18 keys. ARGV[5..]: queue the caller read, expected status.
-- Returns 1 requeued, 0 not in that status (or gone), -1 moved (read the queue again).
local key = KEYS[1]
local q = qkeys(5)
local job = load_job(key)
-- Failed and dead jobs only: they keep their payload (a succeeded one keeps its result).
if not job or job.status ~= ARGV[6] or (job.status ~= 'failed' and job.status ~= 'dead') then
  return 0
end
if job.queue ~= ARGV[5] then return -1 end
local id = string.sub(key, #JOB_PREFIX + 1)
redis.call('ZREM', q[job.status], id)
redis.call('PERSIST', key)
redis.call('DEL', KEYS[2])
-- As a fresh envelope: no eta, no unique key, no result, delivery count from zero.
redis.call('HSET', key, 'expires_at', '', 'result', '', 'reason', '', 'deliveries', 0,
  'updated_at', NOW, 'key', '', 'eta', '', 'cancel', '0')
push_ready(q, key, id, job.priority)
return 1
