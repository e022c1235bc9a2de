-- Put failed, dead and cancelled jobs back as fresh ones, each in one atomic step (the
-- port's contract): the new payload in the hash (the entry carries only the id), no
-- result, reason, progress or expiry, deliveries from 0; its unique key taken again, unless
-- another pending job holds it; its dependencies (field after) that have not ended waited
-- for again (parked, eta 'waiting'); else at the back of its priority stream.
-- KEYS: unique, queues (a job's queue keys are computed from its hash: queue_named and
-- the status index below, same tag). ARGV[5..]: per job, its id and new payload.
-- Returns per job: its id (requeued), the id of the pending job holding its unique key
-- (deduplicated, nothing changed), or '' (unknown, expired, or not failed, dead or
-- cancelled: nothing changed).
local UNIQUE, QUEUES = KEYS[1], KEYS[2]
local REQUEUEABLE = {failed = true, dead = true, cancelled = true}
local PENDING = {queued = true, scheduled = true, running = true}

local function requeue_one(id, payload)
  local key = JOB_PREFIX .. id
  local job = load_job(key)
  if not job or not REQUEUEABLE[job.status] then return '' end
  if job.key and job.key ~= '' then
    local other = redis.call('HGET', UNIQUE, job.key)
    if other and other ~= id and PENDING[live_status(other) or ''] then return other end
    redis.call('HSET', UNIQUE, job.key, id)
  end
  local q = queue_named(job.queue)
  redis.call('ZREM', TAG .. 'q:' .. job.queue .. ':' .. job.status, id)  -- its status index
  redis.call('PERSIST', key)
  redis.call('DEL', DONE_PREFIX .. id)
  redis.call('HDEL', key, 'progress', 'note')
  local waiting = job.after and job.after ~= '' and wait_for(id, job.after) or 0
  local fields = {'payload', payload, 'result', '', 'reason', '', 'expires_at', '',
    'deliveries', 0, 'waiting', waiting, 'cancel', '0', 'updated_at', NOW}
  if waiting > 0 then
    redis.call('HSET', key, 'status', 'scheduled', 'sid', '', 'eta', 'waiting', unpack(fields))
    redis.call('ZADD', q.scheduled, '+inf', id)
  else
    table.insert(fields, 'eta')
    table.insert(fields, '')
    if not push_ready(q, key, id, job.priority, fields) then
      redis.call('SADD', QUEUES, job.queue)  -- a stream it created: listed (add_entry)
    end
  end
  return id
end

local out = {}
for a = 5, #ARGV, 2 do out[#out + 1] = requeue_one(ARGV[a], ARGV[a + 1]) end
return out
