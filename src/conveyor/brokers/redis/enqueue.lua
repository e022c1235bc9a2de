-- Enqueue one job. KEYS: job, done, unique, queues, then the queue's 19 keys.
-- ARGV[5..]: id, queue, payload, priority, eta ('' or ms), unique key ('' or key).
-- Returns the job id: the existing one when an equal unique key is still pending.
-- Idempotent on the id: a retried command (timeout after the server applied it) that
-- finds the job already there writes nothing, so a job is never enqueued twice.
local id, queue, payload, prio, eta, ukey = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local key = KEYS[1]
local q = qkeys(5)
if load_job(key) then return id end
if ukey ~= '' then
  local other = redis.call('HGET', KEYS[3], ukey)
  if other then
    local ojob = load_job(JOB_PREFIX .. other)
    if ojob and (ojob.status == 'queued' or ojob.status == 'scheduled'
        or ojob.status == 'running') then
      return other
    end
  end
  redis.call('HSET', KEYS[3], ukey, id)
end
redis.call('DEL', key, KEYS[2])
redis.call('HSET', key, 'queue', queue, 'payload', payload, 'priority', prio, 'key', ukey,
  'deliveries', 0, 'cancel', '0', 'updated_at', NOW, 'expires_at', '', 'result', '',
  'reason', '')
redis.call('SADD', KEYS[4], queue)
place(q, key, id, prio, eta)
return id
