-- Extend a lease only while the delivery still owns the job.
-- KEYS: job, done, unique, queues, then the queue's 18 keys. ARGV[5..]: token, lease (ms).
-- Returns 0 lost, 1 ok, 2 ok but cancel() was called.
allow_oom()
local key = KEYS[1]
local q = qkeys(5)
local job = load_job(key)
if not owned(job, ARGV[5]) then return 0 end
local id = string.sub(key, #JOB_PREFIX + 1)
local until_ms = NOW + tonumber(ARGV[6])
redis.call('ZADD', q.running, until_ms, id)
-- Reset the entry's idle time for the owner only (never a blind XCLAIM that could steal
-- it back), so the XAUTOCLAIM sweep leaves a renewed job alone.
redis.call('XCLAIM', q.s[tonumber(job.priority)], GROUP, job.consumer, 0, job.sid, 'JUSTID')
if job.cancel == '1' then return 2 end
return 1
