-- Shared prelude of every broker script (prepended by _scripts.py).
-- Convention: ARGV[1] now (ms of the injected clock; '' on the real clock: the server's
-- TIME, so every client agrees), ARGV[2] consumer group, ARGV[3] job hash prefix
-- "{P}:job:", ARGV[4] done list prefix "{P}:done:".
-- A queue's keys come as 18 consecutive KEYS in the order of _keys.QUEUE_KEY_SUFFIXES.
-- CANCELLED_TTL_MS, CANCELLED_PENDING and CANCELLED_WORKER_STOPPED are brokers/_base.py's
-- (the cancelled record's TTL and reasons), defined above this file by _scripts.py.
local GROUP = ARGV[2]
local JOB_PREFIX = ARGV[3]
local DONE_PREFIX = ARGV[4]
local QK = 18
local GC_GRACE_MS = 60000  -- real TTLs outlive logical expiry: they only collect garbage
-- Values passed at once with unpack() (Lua's stack takes ~8,000): more go in slices.
local UNPACK_MAX = 1000

local function qkeys(base)
  local q = {s = {}}
  for p = 0, 9 do q.s[p] = KEYS[base + p] end
  q.scheduled = KEYS[base + 10]
  q.running = KEYS[base + 11]
  q.succeeded = KEYS[base + 12]
  q.failed = KEYS[base + 13]
  q.dead = KEYS[base + 14]
  q.cancelled = KEYS[base + 15]
  q.sweep = KEYS[base + 16]
  q.reap = KEYS[base + 17]
  return q
end

-- Now, in ms (ARGV[1]). Read by the scripts that name it only: enqueue_one.lua takes the
-- time from its job's stream entry id instead, and saves the TIME call (~0.6 µs).
local NOW
if ARGV[1] == '' then
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  NOW = tonumber(ARGV[1])
end

local TERMINAL = {succeeded = true, failed = true, dead = true, cancelled = true}

-- A number as a command argument: Lua makes one with sprintf('%.14g') each time, about half
-- a microsecond of the server's; the few a call sends per job (now, a lease or record
-- expiry, a delivery count) are made once each here and looked up after.
local DIGITS = setmetatable({}, {__index = function(t, n)
  -- '%d' for a whole number (tostring's '%.14g' would write 1e+14 for a long TTL, which
  -- PEXPIRE refuses); '%.17g' keeps a fraction (a test clock's) as Redis itself would.
  local s
  if n == math.floor(n) and n > -1e18 and n < 1e18 then
    s = string.format('%d', n)
  else
    s = string.format('%.17g', n)
  end
  rawset(t, n, s)
  return s
end})

local function fields_of(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

-- Delete consumers of the group that hold no pending entry and sat idle at least
-- `min_idle` ms: only `only` when given, else all. Checked and deleted in this one script,
-- so an entry cannot be handed to a consumer between the check and XGROUP DELCONSUMER
-- (which would drop it from the pending list). Returns how many were deleted.
local function drop_idle_consumers(stream, only, min_idle)
  if redis.call('EXISTS', stream) == 0 then return 0 end
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', stream, GROUP)
  if not ok then return 0 end  -- no group on this stream
  local n = 0
  for _, c in ipairs(consumers) do
    local info = fields_of(c)
    if (only == nil or info.name == only) and tonumber(info.pending) == 0
        and tonumber(info.idle) >= min_idle then
      redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, info.name)
      n = n + 1
    end
  end
  return n
end

-- The consumer group's XINFO GROUPS entry on a stream (a table: pending, last-delivered-id,
-- ...), or nil when the stream or the group does not exist.
local function group_info(stream)
  if redis.call('EXISTS', stream) == 0 then return nil end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = fields_of(g)
    if info.name == GROUP then return info end
  end
  return nil
end

-- Stream entry ids in order (ms, then sequence).
local function sid_less(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end

-- The job id a stream entry names: its job field, or raw-<entry id> for an entry written
-- without one (fetch hands it out under that id; flat: the entry's fields).
local function job_of(sid, flat)
  return flat[1] == 'job' and flat[2] or 'raw-' .. sid
end

-- The job as a table, or nil when absent or logically expired.
local function load_job(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local job = {}
  for i = 1, #flat, 2 do job[flat[i]] = flat[i + 1] end
  if job.expires_at and job.expires_at ~= '' and tonumber(job.expires_at) <= NOW then
    return nil
  end
  return job
end

-- Append a job's entry to a priority stream; the first entry creates the stream and its
-- consumer group (NOMKSTREAM: one call in the usual case, where both exist). `payload`
-- (optional) rides in the entry (enqueue of a job due now: the job hash then holds no
-- payload, see _keys.py). Returns the entry id, and true when the stream existed already.
-- Streams are created here only, by scripts that list the job's queue in {P}:queues in the
-- same step (no script removes a queue from that set): so a stream that exists is of a
-- listed queue.
local function add_entry(stream, id, payload)
  local sid
  if payload then
    sid = redis.call('XADD', stream, 'NOMKSTREAM', '*', 'job', id, 'payload', payload)
  else
    sid = redis.call('XADD', stream, 'NOMKSTREAM', '*', 'job', id)
  end
  if sid then return sid, true end
  redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
  if payload then return redis.call('XADD', stream, '*', 'job', id, 'payload', payload), false end
  return redis.call('XADD', stream, '*', 'job', id), false
end

-- A job due now at enqueue (enqueue.lua, enqueue_one.lua): its entry, carrying the payload,
-- and its small hash, updated at `at` (ms, a string; nil: the entry id's, the server's
-- time unless its clock went back, when the stream's last id is a little later). Returns
-- true when the stream existed already (add_entry).
-- (No delivery count, which fetch reads as 0, and no empty unique key: each field an HSET
-- writes costs the server time.)
local function enter(stream, key, id, name, prio, payload, ukey, at)
  local sid, existed = add_entry(stream, id, payload)
  at = at or string.match(sid, '^%d+')
  if ukey == '' then
    redis.call('HSET', key, 'status', 'queued', 'sid', sid, 'queue', name, 'priority', prio,
      'updated_at', at)
  else
    redis.call('HSET', key, 'status', 'queued', 'sid', sid, 'queue', name, 'priority', prio,
      'updated_at', at, 'key', ukey)
  end
  return existed
end

-- Put a job at the tail of its priority stream as queued (a new entry, a new place in line).
-- `fields` (optional): more job hash fields, written in the same HSET. Returns true when
-- the stream existed already (add_entry).
local function push_ready(q, key, id, prio, fields)
  local sid, existed = add_entry(q.s[tonumber(prio)], id)
  redis.call('HSET', key, 'status', 'queued', 'sid', sid, unpack(fields or {}))
  return existed
end

-- An eta as a client sends it: '' (due now), 'parked', or '+' and the ms left until it on the
-- sender's clock, made absolute here on this script's NOW (the clock leases and expiry use),
-- so a client whose clock is off still delays a job by what it asked.
local function eta_at(eta)
  if string.sub(eta, 1, 1) ~= '+' then return eta end
  return NOW + tonumber(string.sub(eta, 2))
end

-- Keys beyond the declared ones, under the broker's tag "{P}:" (so in the slot of every
-- declared key), computed here as job keys are: a job's dependents are not known up front.
local TAG = string.sub(JOB_PREFIX, 1, #JOB_PREFIX - 4)

-- A job scheduled to come due within a second: fetches asleep in their XREAD (an idle
-- worker's sleeps a second at a time) do not know of it and would start it late by up to
-- that much; the resume signal stream, which they read too (fetch.lua), wakes them to look
-- again and learn the new due time. It keeps its last entry only (_keys.py), and the
-- fetches are woken once the script ends, so one entry a call does (`signalled`).
local SOON_MS = 1000
local SIGNAL = TAG .. 'resumed'
local signalled = false
local function due_soon(name, eta)
  if not signalled and tonumber(eta) < NOW + SOON_MS then
    redis.call('XADD', SIGNAL, 'MAXLEN', 1, '*', 'queue', name)
    signalled = true
  end
end

-- Queued now, or scheduled until eta ('parked': until promote; scored +inf, never due).
-- `fields` (optional): more job hash fields, written in the same HSET as the status.
-- Returns true when the job went into a stream that existed already (so its queue is
-- listed in {P}:queues: see add_entry), false otherwise.
local function place(q, key, id, prio, eta, fields)
  eta = eta_at(eta)
  fields = fields or {}
  if eta == 'parked' or (eta ~= '' and tonumber(eta) > NOW) then
    redis.call('HSET', key, 'status', 'scheduled', 'sid', '', 'eta', eta, unpack(fields))
    redis.call('ZADD', q.scheduled, eta == 'parked' and '+inf' or eta, id)
    if eta ~= 'parked' then due_soon(q.name, eta) end
    return false
  end
  table.insert(fields, 'eta')
  table.insert(fields, '')
  return push_ready(q, key, id, prio, fields)
end

-- The payload a stream entry carries (enqueue writes a due job's payload there, not in the
-- job hash: see _keys.py), or nil (an entry of a job that has its payload in the hash).
local function entry_payload(stream, sid)
  local entry = redis.call('XRANGE', stream, sid, sid)[1]
  local f = entry and entry[2]
  if f and f[3] == 'payload' then return f[4] end
  return nil
end

-- Remove a delivered entry: ack it (out of the pending list) and delete it from the stream.
-- `key` (optional): the job lives on (handed back, reclaimed, cancelled): a payload the
-- entry carries moves into the job hash first, so it is not lost with the entry.
local function drop_entry(stream, sid, key)
  if sid and sid ~= '' then
    if key then
      local payload = entry_payload(stream, sid)
      if payload then redis.call('HSET', key, 'payload', payload) end
    end
    redis.call('XACK', stream, GROUP, sid)
    redis.call('XDEL', stream, sid)
  end
end

local function notify(id)
  local done = DONE_PREFIX .. id
  redis.call('LPUSH', done, '1')
  redis.call('PEXPIRE', done, NOTIFY_TTL_MS)
end

local DEPS_PREFIX = TAG .. 'deps:'

-- Let the rest of the script run on a full Redis (used memory over maxmemory, policy
-- noeviction), as Redis 7's `#!lua flags=allow-oom` would (a shebang Redis 6.2 cannot
-- read). A script without flags is refused there at a command that may take memory only
-- while it has written nothing yet (Redis would not stop a script halfway): a first write
-- that takes none lets the rest through. That write is a DEL of {P}:oom, a key never
-- written (so it deletes nothing, and nothing is replicated). Called before their first
-- write by the scripts a worker needs to drain a full server (fetch, renew, finish,
-- release, resume) and by those that free memory or mark existing jobs (cancel, progress,
-- watch, heartbeat): what they add is bounded by the jobs already stored, and each finish
-- frees a job's stream entry. Enqueue never calls it: a full server refuses new jobs.
local function allow_oom()
  redis.call('DEL', TAG .. 'oom')
end

-- The epoch marker's token (_keys.py {P}:epoch), written now as `token` when it is missing:
-- nobody looked before, or Redis lost its data since.
local function epoch_of(key, token)
  local found = redis.call('GET', key)
  if found then return found end
  redis.call('SET', key, token)
  return token
end

-- A queue's keys from its name, for scripts that do not declare them (a dependent's queue;
-- enqueue, whose KEYS stay two so a lone job costs little to send and unpack): its
-- streams by priority, made on first use, and its scheduled set.
local STREAMS_OF = {__index = function(s, p)
  local k = s.prefix .. p
  rawset(s, p, k)
  return k
end}
local function queue_named(name)
  local base = TAG .. 'q:' .. name .. ':'
  return {name = name, s = setmetatable({prefix = base .. 's'}, STREAMS_OF),
    scheduled = base .. 'scheduled'}
end

-- The status of a live job, or nil (unknown, or its record expired).
local function live_status(id)
  local f = redis.call('HMGET', JOB_PREFIX .. id, 'status', 'expires_at')
  if not f[1] then return nil end
  if f[2] and f[2] ~= '' and tonumber(f[2]) <= NOW then return nil end
  return f[1]
end

-- Register job `id` with each of `deps` (ids joined by ',') that has not ended (enqueue,
-- requeue); how many there were. An unknown or expired one is not waited for.
local function wait_for(id, deps)
  local waiting = 0
  for dep in string.gmatch(deps, '[^,]+') do
    local status = live_status(dep)
    if status and not TERMINAL[status] then
      waiting = waiting + redis.call('SADD', DEPS_PREFIX .. dep, id)
      redis.call('HSET', JOB_PREFIX .. dep, 'deps', '1')
    end
  end
  return waiting
end

-- A dependency of `child` ended: count it off; the last one makes the child due, in its own
-- queue (whose keys this script may not have declared: they are computed, same tag).
local function release_dependent(child)
  local ckey = JOB_PREFIX .. child
  local c = redis.call('HMGET', ckey, 'status', 'eta', 'queue', 'priority')
  if c[1] ~= 'scheduled' or c[2] ~= 'waiting' then return end  -- cancelled meanwhile
  if redis.call('HINCRBY', ckey, 'waiting', -1) > 0 then return end
  local cq = queue_named(c[3])
  redis.call('ZREM', cq.scheduled, child)
  push_ready(cq, ckey, child, c[4], {'eta', ''})
end

-- A job that leaves before its dependencies ended (purged, cancelled): they forget it
-- (its field after lists them: enqueue.lua), so its id, enqueued again, is counted once.
local function forget_dependencies(job, id)
  for dep in string.gmatch(job.after or '', '[^,]+') do
    redis.call('SREM', DEPS_PREFIX .. dep, id)
  end
end

-- A job that ended takes its dependents (depends_on) along. Its hash says whether it has
-- any (field deps, set by their enqueue), so a job without dependents costs no command.
local function release_dependents(job, id)
  if job.deps ~= '1' then return end
  local dkey = DEPS_PREFIX .. id
  for _, child in ipairs(redis.call('SMEMBERS', dkey)) do release_dependent(child) end
  redis.call('DEL', dkey)
end

-- Make a job terminal: record, expiry (logical `expires`, and `keep`, the real TTL after
-- it, both as arguments), index, the completion signal if somebody waits for it (field
-- waited: watch.lua), and its dependents counted down. `later` (optional): a batch's index
-- additions (index key -> {score, id, ...}), added by add_indexed after one trim per index,
-- instead of a trim and ZADD per job. The arguments after it (optional): more job hash
-- fields and values, written in the same HSET (as arguments, not a table: finish ends many
-- jobs a call, and makes `expires` and `keep` once per TTL, not per job).
local function ended(q, key, job, id, status, expires, keep, later, ...)
  redis.call('HSET', key, 'status', status, 'expires_at', expires, 'updated_at', DIGITS[NOW],
    ...)
  redis.call('PEXPIRE', key, keep)
  if TERMINAL[status] then
    local index = q[status]
    if later then
      local add = later[index]
      if not add then add = {}; later[index] = add end
      local n = #add
      add[n + 1] = expires
      add[n + 2] = id
    else
      redis.call('ZREMRANGEBYSCORE', index, '-inf', NOW)
      redis.call('ZADD', index, expires, id)
    end
    release_dependents(job, id)
  end
  if job.waited then notify(id) end
end

-- ended, for a record kept `ttl_ms` (a number).
local function terminate(q, key, job, id, status, ttl_ms, later, ...)
  ended(q, key, job, id, status, DIGITS[NOW + ttl_ms], DIGITS[ttl_ms + GC_GRACE_MS], later, ...)
end

-- The index additions `terminate` put off: per index, expired entries out, then all in.
local function add_indexed(later)
  for index, add in pairs(later) do
    redis.call('ZREMRANGEBYSCORE', index, '-inf', NOW)
    redis.call('ZADD', index, unpack(add))
  end
end

local function release_key(unique, job, id)
  if job.key and job.key ~= '' and redis.call('HGET', unique, job.key) == id then
    redis.call('HDEL', unique, job.key)
  end
end

-- The delivery is still the job's current lease holder.
local function owned(job, token)
  return job ~= nil and job.status == 'running' and job.token ~= '' and job.token == token
end

-- The fence of finish and release, from the job's status, token and settled_by fields
-- (nil or false: not there) and the delivery's token: 'owned' (go on; the caller marks this
-- delivery as the one that settles the job, field settled_by = token, in the HSET it
-- writes anyway), 'again' (this very delivery settled it already: a call resent after a
-- lost reply took effect the first time) or 'refused'.
local function fence(status, held, settled_by, token)
  if status == 'running' and token ~= '' and held == token then return 'owned' end
  if status and status ~= 'running' and token ~= '' and settled_by == token then
    return 'again'
  end
  return 'refused'
end

-- fence, of a job as load_job reads it (nil: none).
local function settle(job, token)
  if not job then return 'refused' end
  return fence(job.status, job.token, job.settled_by, token)
end

-- A running job whose cancel was requested and whose worker is gone (lease expired) or
-- handed it back: it ends here, cancelled, rather than run again. `fields` (optional): more
-- job hash fields, written in the same HSET.
local function end_cancelled(q, key, job, id, unique, fields)
  drop_entry(q.s[tonumber(job.priority)], job.sid, key)
  redis.call('ZREM', q.running, id)
  fields = fields or {}
  table.insert(fields, 'sid')
  table.insert(fields, '')
  table.insert(fields, 'reason')
  table.insert(fields, CANCELLED_WORKER_STOPPED)
  terminate(q, key, job, id, 'cancelled', CANCELLED_TTL_MS, nil, unpack(fields))
  release_key(unique, job, id)
end

-- Events (docs/observability.md): the stream {P}:events, which no group reads and no job
-- is in. Clients send each event framed, '<length>:<bytes>'; a script collects those of the
-- changes it makes and appends them at its end (`publish`), up to EVENTS_PER_ENTRY per
-- entry, so an event costs the server a slice of one XADD, not an XADD of its own. Entry
-- ids count events: the counter {P}:events:n numbers them, and an entry's id is its last
-- event's number ('<n>-0'), so MINID trims by count: it keeps the newest `cap` events and
-- at most EVENTS_PER_ENTRY - 1 more (the entry that straddles the line), and up to
-- EVENTS_TRIM_EVERY - 1 more appended since the last trim (append_entries).
local EVENTS = TAG .. 'events'
local EVENTS_N = TAG .. 'events:n'
local EVENTS_PER_ENTRY = 64
local EVENTS_TRIM_EVERY = 16

-- A call that carries events ends with the cap and '!e' (the client's `with_events`); one
-- that carries none has the arguments it always had. Returns the cap (nil: no events) and
-- the index of the last argument before those two.
local function carried()
  if ARGV[#ARGV] ~= '!e' then return nil, #ARGV end
  return ARGV[#ARGV - 1], #ARGV - 2
end

-- The counter fell behind the stream (deleted by hand), or holds no count: move it past
-- the stream's last id. Returns the new last number for `n` more events, or nil (no
-- stream there).
local function events_behind(n)
  local ok, info = pcall(redis.call, 'XINFO', 'STREAM', EVENTS)
  if not ok then return nil end
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local top = tonumber(string.match(info[i + 1], '^(%d+)')) + n
      redis.call('SET', EVENTS_N, top)
      return top
    end
  end
  return nil
end

-- Append one entry of events, numbered `n` (its last event's), trimming the stream to the
-- events from number `keep` on (nil: no trim); false when it cannot be written (see
-- append_entries).
local function add_events_entry(n, body, keep)
  if keep then return pcall(redis.call, 'XADD', EVENTS, 'MINID', keep, n, 'e', body) end
  return pcall(redis.call, 'XADD', EVENTS, n, 'e', body)
end

-- Append entries of framed events in order: `bodies`, each EVENTS_PER_ENTRY events joined
-- but the last (which has the rest), `total` events in all. pcall: an event that cannot be
-- written (the key made another type by hand) costs no job. The stream is trimmed when
-- the count passes a multiple of EVENTS_TRIM_EVERY (so by every call of that many events
-- or more): a trim walks the head entry's node, whose deleted entries Redis steps over
-- one by one (1.5-2 µs of a lone job's enqueue when made by each call).
-- The counter's INCRBY is a redis.pcall too (no dearer than redis.call): a counter that
-- holds no count (made text or another type by hand) failed the call after its writes
-- (Redis does not undo them: a job queued, its caller told it was not), and is taken as
-- lost instead: moved past the stream's last id (events_behind), or set to `total` when
-- there is no stream. An entry id goes as a number, which Redis writes whole ('%.17g';
-- `n` reads as 'n-0'): Lua's `..` would write 1e+14 from 10^14 on, an id Redis refuses.
local function append_entries(cap, bodies, total)
  if total == 0 then return end
  local last = redis.pcall('INCRBY', EVENTS_N, total)
  local keep  -- the count passed a multiple of EVENTS_TRIM_EVERY, or was set
  if type(last) ~= 'number' then  -- no count: an error reply
    last = events_behind(total)
    if not last then
      last = total
      redis.call('SET', EVENTS_N, last)
    end
    keep = math.max(last - cap + 1, 0)
  elseif last % EVENTS_TRIM_EVERY < total then
    keep = math.max(last - cap + 1, 0)
  end
  local first = last - total
  for k = 1, #bodies do
    local j = k * EVENTS_PER_ENTRY  -- events up to this entry's last
    if j > total then j = total end
    if not add_events_entry(first + j, bodies[k], keep) then
      local healed = events_behind(total)
      if not healed then return end
      first, keep = healed - total, math.max(healed - cap + 1, 0)
      add_events_entry(first + j, bodies[k], keep)
    end
  end
end

-- Append framed events (a list, '' entries skipped by the caller) in order, joined here
-- EVENTS_PER_ENTRY to an entry. (A client that can send them joined already saves the
-- server a string per event and the join: finish.lua.)
local function publish(cap, framed)
  local bodies = framed  -- one event: its own entry's body
  if #framed > 1 then
    bodies = {}
    for i = 1, #framed, EVENTS_PER_ENTRY do
      bodies[#bodies + 1] = table.concat(framed, '', i,
        math.min(i + EVENTS_PER_ENTRY - 1, #framed))
    end
  end
  append_entries(cap, bodies, #framed)
end
