-- Record how one delivery ended, in one atomic step, refused for a stale token: ack and
-- delete the stream entry, store status and result with their TTL, signal waiters; for a
-- retry put the job back (scheduled or queued) with its new payload instead.
-- KEYS: job, done, unique, queues, the delivery queue's 19 keys, the retry queue's 19 keys.
-- ARGV[5..]: token, status, result, ttl (ms), reason, has_retry,
--            retry payload, retry priority, retry eta ('' or ms), retry key, retry queue.
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
local status, result, ttl_ms, reason = ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9]
drop_entry(q.s[tonumber(job.priority)], job.sid)
redis.call('ZREM', q.running, id)
if ARGV[10] == '1' then
  local rq = qkeys(5 + QK)
  redis.call('HSET', key, 'payload', ARGV[11], 'priority', ARGV[12], 'key', ARGV[14],
    'queue', ARGV[15], 'deliveries', 0, 'result', result, 'reason', reason,
    'updated_at', NOW, 'cancel', '0', 'lease_until', '')
  redis.call('SADD', KEYS[4], ARGV[15])
  place(rq, key, id, ARGV[12], ARGV[13])
  return 1
end
redis.call('HSET', key, 'result', result, 'reason', reason, 'sid', '')
terminate(q, key, job, id, status, ttl_ms)
release_key(KEYS[3], job, id)
return 1
