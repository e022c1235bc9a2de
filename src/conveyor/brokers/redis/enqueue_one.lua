-- Enqueue one new job due now, without unique key or dependencies: `task.delay()`, the usual
-- call, with none of enqueue.lua's batch work (its helpers, tables and arguments each cost
-- the server time on every call): the same writes enqueue.lua makes for such a job.
-- KEYS: queues. ARGV[5]: the queue, ARGV[6]: the job id, ARGV[7]: the payload, ARGV[8]: the
-- priority, ARGV[9]: '1' to answer the length of the job's stream (a sharded prefix's load
-- signal, _sharded.py), else '0'; then, carrying the job.enqueued event, ARGV[10]: the
-- cap, ARGV[11]: the event, framed.
-- Returns the stream's length (-1 when not asked), or nil having written nothing when the id
-- names a job or its done list already (a retried command, or an id given twice): the client
-- then sends the job through enqueue.lua, which tells a live job from an expired record.
local name, id, prio = ARGV[5], ARGV[6], ARGV[8]
local key = JOB_PREFIX .. id
if redis.call('EXISTS', key, DONE_PREFIX .. id) > 0 then return false end
local stream = TAG .. 'q:' .. name .. ':s' .. prio
-- Updated at the injected clock's now, else the entry id's time (no TIME call).
if not enter(stream, key, id, name, prio, ARGV[7], '', ARGV[1] ~= '' and ARGV[1] or nil) then
  redis.call('SADD', KEYS[1], name)
end
if ARGV[11] then append_entries(ARGV[10], {ARGV[11]}, 1) end
if ARGV[9] == '1' then return redis.call('XLEN', stream) end
return -1
