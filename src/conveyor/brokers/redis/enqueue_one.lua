-- Enqueue one new job due now, without unique key or dependencies: `task.delay()`, the usual
-- call, with none of enqueue.lua's batch work (its helpers, tables and arguments each cost
-- the server time on every call): the same writes enqueue.lua makes for such a job.
-- Arguments of its own, not common.lua's head (_scripts.OWN_ARGS): every argument costs the
-- server ~0.3 µs of each call, and the head's group and two prefixes are not needed here.
-- KEYS[1]: {P}:queues, whose tag '{P}:' names every key written (and routes the call on a
-- cluster). ARGV[1]: now (ms of the injected clock, '' on the real clock: common.lua's
-- head), ARGV[2]: the queue, ARGV[3]: the job id, ARGV[4]: the payload, ARGV[5]: the
-- priority, ARGV[6]: '1' to answer the length of the job's stream (a sharded prefix's load
-- signal, _sharded.py), else '0'; then, carrying the job.enqueued event, ARGV[7]: the
-- cap, ARGV[8]: the event, framed.
-- Returns the stream's length (-1 when not asked), or nil having written nothing when the id
-- names a job or its done list already (a retried command, or an id given twice), or the
-- job's stream does not exist yet (its queue's first job at that priority): the client then
-- sends the job through enqueue.lua, which tells a live job from an expired record and
-- makes the stream, its group, and lists the queue.
-- Written out without common.lua's helpers (add_entry, enter, append_entries and the two
-- they call), which do the same for any number of jobs and events: each helper a script
-- names is a closure made again on every call, and with the calls between them they cost
-- ~2 µs of a lone job's ~20 µs of server CPU (docs/architecture.md, tenth round).
local tag = string.sub(KEYS[1], 1, -7)  -- '{P}:queues'
local name, id, prio = ARGV[2], ARGV[3], ARGV[5]
local key = tag .. 'job:' .. id
if redis.call('EXISTS', key, tag .. 'done:' .. id) > 0 then return false end
local stream = tag .. 'q:' .. name .. ':s' .. prio
local sid = redis.call('XADD', stream, 'NOMKSTREAM', '*', 'job', id, 'payload', ARGV[4])
if not sid then return false end  -- no stream: nothing written
-- Updated at the injected clock's now, else the entry id's time (no TIME call).
redis.call('HSET', key, 'status', 'queued', 'sid', sid, 'queue', name, 'priority', prio,
  'updated_at', ARGV[1] ~= '' and ARGV[1] or string.match(sid, '^%d+'))
if ARGV[8] then  -- its event, numbered n: append_entries for one event
  local events, counter = tag .. 'events', tag .. 'events:n'
  -- A counter that holds no count (made text or another type by hand) answers an error
  -- table, not the job's failure (append_entries): it is set as a lost one is, below.
  local n = redis.pcall('INCR', counter)
  local counted = type(n) == 'number'
  -- The usual append: no trim due (when the count passes a multiple of EVENTS_TRIM_EVERY,
  -- as common.lua), the id given as the number n (`n` is `n-0`: no string made for it,
  -- and Redis writes it whole where Lua would write 1e+14).
  local added = counted and n % EVENTS_TRIM_EVERY ~= 0 and redis.pcall('XADD', events, n, 'e',
    ARGV[8])
  local repaired = false
  while type(added) ~= 'string' do  -- a trim due, refused, or no count
    if added or not counted then  -- refused (an error table), once more after a repair
      if repaired then break end
      -- The counter fell behind the stream (deleted by hand) or holds no count, and moves
      -- past its last id (events_behind; to 1 with no stream), the event then appended
      -- with a trim (append_entries); or it is no stream (made another type by hand), and
      -- the event is left out, not the job.
      local ok, info = pcall(redis.call, 'XINFO', 'STREAM', events)
      if ok then
        for i = 1, #info, 2 do
          if info[i] == 'last-generated-id' then
            n = tonumber(string.match(info[i + 1], '^(%d+)')) + 1
          end
        end
      elseif counted then
        break
      else
        n = 1
      end
      redis.call('SET', counter, n)
      counted, repaired = true, true
    end
    added = redis.pcall('XADD', events, 'MINID', math.max(n - ARGV[7] + 1, 0), n, 'e', ARGV[8])
  end
end
if ARGV[6] == '1' then return redis.call('XLEN', stream) end
return -1
