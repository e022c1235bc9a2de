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
-- Written out without common.lua's helpers (add_entry, enter, append_entries and the two
-- they call), which do the same for any number of jobs and events: each helper a script
-- names is a closure made again on every call, and with the calls between them they cost
-- ~3 µs of a lone job's ~20 µs of server CPU (docs/architecture.md, tenth round).
local name, id, prio, payload = ARGV[5], ARGV[6], ARGV[8], ARGV[7]
local key = JOB_PREFIX .. id
if redis.call('EXISTS', key, DONE_PREFIX .. id) > 0 then return false end
local stream = TAG .. 'q:' .. name .. ':s' .. prio
local sid = redis.call('XADD', stream, 'NOMKSTREAM', '*', 'job', id, 'payload', payload)
if not sid then  -- the first entry: the stream, its group, and the queue listed (add_entry)
  redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
  sid = redis.call('XADD', stream, '*', 'job', id, 'payload', payload)
  redis.call('SADD', KEYS[1], name)
end
-- Updated at the injected clock's now, else the entry id's time (no TIME call).
redis.call('HSET', key, 'status', 'queued', 'sid', sid, 'queue', name, 'priority', prio,
  'updated_at', ARGV[1] ~= '' and ARGV[1] or string.match(sid, '^%d+'))
if ARGV[11] then  -- its event, numbered n: append_entries for one event
  local n = redis.call('INCRBY', EVENTS_N, 1)
  for again = 0, 1 do
    local added
    if n % EVENTS_TRIM_EVERY == 0 then
      added = redis.pcall('XADD', EVENTS, 'MINID', math.max(n - ARGV[10] + 1, 0), n .. '-0',
        'e', ARGV[11])
    else
      added = redis.pcall('XADD', EVENTS, n .. '-0', 'e', ARGV[11])
    end
    if type(added) ~= 'table' or again == 1 then break end  -- written, or refused twice
    -- Refused: the counter fell behind the stream (deleted by hand), and moves past its last
    -- id (events_behind); or it is no stream (made another type by hand), and the event is
    -- left out, not the job.
    local ok, info = pcall(redis.call, 'XINFO', 'STREAM', EVENTS)
    if not ok then break end
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        n = tonumber(string.match(info[i + 1], '^(%d+)')) + 1
      end
    end
    redis.call('SET', EVENTS_N, n)
  end
end
if ARGV[9] == '1' then return redis.call('XLEN', stream) end
return -1
