-- Delete a job that is not running (Broker.delete). KEYS: job, done, unique, queues, then its
-- queue's 18 keys. ARGV[5]: the queue the caller read from the job (the keys it passed).
-- The job leaves its stream (queued: never delivered, so not pending), its scheduled set or
-- its ended status's index; a pending one goes as purge takes it: its unique key freed, its
-- dependents counted down as its ending would, its dependencies forgetting it. Whoever
-- waits for it is woken and finds no record. A running job under a live lease is left as
-- it is (its worker owns it); one whose lease expired (its worker is gone) goes as a pending
-- one, its delivery out of the stream, so a late finish finds no record. Returns the status
-- it had, 'leased' (nothing changed), 'missing' or 'moved' (queue changed: read it again).
local key = KEYS[1]
local q = qkeys(5)
local job = load_job(key)
if not job then return 'missing' end
if job.queue ~= ARGV[5] then return 'moved' end
local id = string.sub(key, #JOB_PREFIX + 1)
local status = job.status
if status == 'running' then
  local lease = redis.call('ZSCORE', q.running, id)
  if lease and tonumber(lease) > NOW then return 'leased' end
  drop_entry(q.s[tonumber(job.priority)], job.sid)
  redis.call('ZREM', q.running, id)
elseif status == 'queued' then
  drop_entry(q.s[tonumber(job.priority)], job.sid)
elseif status == 'scheduled' then
  redis.call('ZREM', q.scheduled, id)
elseif TERMINAL[status] then
  redis.call('ZREM', q[status], id)
end
if not TERMINAL[status] then
  release_key(KEYS[3], job, id)
  release_dependents(job, id)
  forget_dependencies(job, id)
end
redis.call('DEL', key)
if job.waited then notify(id) else redis.call('DEL', KEYS[2]) end
return status
