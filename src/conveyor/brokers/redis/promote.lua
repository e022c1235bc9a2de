-- Make a parked job due now with a new payload (a workflow step whose inputs are ready).
-- KEYS: job, done, unique, queues, then its queue's 18 keys. ARGV[5..]: queue the caller
-- read, new payload. Returns 1 promoted, 0 not parked (nothing changed), -1 moved.
local key = KEYS[1]
local q = qkeys(5)
local job = load_job(key)
if not job or job.status ~= 'scheduled' or job.eta ~= 'parked' then return 0 end
if job.queue ~= ARGV[5] then return -1 end
local id = string.sub(key, #JOB_PREFIX + 1)
redis.call('ZREM', q.scheduled, id)
redis.call('HSET', key, 'payload', ARGV[6], 'eta', '', 'updated_at', NOW)
push_ready(q, key, id, job.priority)
return 1
