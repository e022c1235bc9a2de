-- Hand out up to `count` jobs from several queues under a lease, in one atomic step:
-- 1. due scheduled jobs move to their stream; jobs whose lease expired go back in line;
-- 2. the XAUTOCLAIM sweep (at most once per sweep period per queue) takes over pending
--    entries idle longer than the lease that no live lease owns (a reader died between
--    reading and bookkeeping, or state restored from disk) and hands them out;
-- 3. XREADGROUP from the priority streams, highest priority first, oldest entry first
--    across the queues.
-- Besides, at most once per reap period per queue, consumers idle at least the reap idle
-- time with nothing pending are deleted from the queue's groups (stopped workers' names).
-- Nothing is read from a paused queue (streams or sweep); its promote, reclaim and reap
-- go on, so its due and reclaimed jobs wait queued for resume.
-- KEYS: 18 keys per queue, then the unique-key hash, the paused set and the resume signal
-- stream. ARGV[5..]: consumer, count,
-- lease (ms), sweep idle (ms), reap period (ms, 0: never), reap idle (ms),
-- number of queues, the queue names, the levels hint (below), woken ('1': see "Woken"
-- below, else '0'), then `count` fresh tokens.
-- Returns {deliveries, ms until the next event (-1: none, or jobs were delivered), groups
-- recreated, last entry ids or {}, levels}; a delivery is {id, queue, payload, token,
-- deliveries, priority}. The last ids are the queues' streams' (ten per queue) and one more:
-- the resume signal stream's, for the caller to block on too.
-- Every command a script sends costs the server a few µs more than the command itself
-- (much more when the server sat idle: caches gone), so the usual calls are kept few.
-- A full Redis (maxmemory, noeviction) must still let a worker fetch, so that finishing
-- frees memory: its first write in the usual call takes none in Redis's eyes (ZREM of a
-- due or expired job, XREADGROUP, XAUTOCLAIM), and each write that may come first and take
-- some (a sweep or reap marker, a group recreated) calls common.lua allow_oom before.
-- Levels: with one queue, which priority streams exist, one '0' or '1' per priority
-- (0..9); the caller passes back what the last call returned ('' when it has none), so
-- a level in use is read without an EXISTS of its own, and one EXISTS over the other
-- streams tells whether any came into use since.
local CONSUMER, COUNT, LEASE = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local SWEEP_MS, REAP_EVERY, REAP_IDLE = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local NQ = tonumber(ARGV[11])
local HINT = ARGV[12 + NQ]
local WOKEN = ARGV[13 + NQ] == '1'
local TOKEN_BASE = 13 + NQ
-- (Numbers a call sends as command arguments go as strings: Redis turns a Lua number into
-- one with snprintf('%.17g'), ~2,500 instructions each.)
local MOVE_LIMIT = '1000'
local NOW_ARG = DIGITS[NOW]
local LEASE_AT = DIGITS[NOW + LEASE]  -- the lease expiry of every delivery of this call
local UNIQUE = KEYS[NQ * QK + 1]
local PAUSED, RESUMED = KEYS[NQ * QK + 2], KEYS[NQ * QK + 3]
local recreated = 0
local given = 0  -- deliveries made so far (tokens used)
local out = {}
local leased = {}  -- running index -> {lease expiry, id, ...}: one ZADD per index (lease_all)
local Q = {}
for i = 1, NQ do Q[i] = qkeys(1 + (i - 1) * QK); Q[i].name = ARGV[11 + i] end

-- Paused queues: one small read per call (several queues: which ones only when some queue
-- is paused). LIVE: how many are not (none: no stream is read).
local LIVE = NQ
if NQ == 1 then
  Q[1].paused = redis.call('SISMEMBER', PAUSED, Q[1].name) == 1
elseif redis.call('SCARD', PAUSED) > 0 then
  local names = {}
  for i = 1, NQ do names[i] = Q[i].name end
  for i, flag in ipairs(redis.call('SMISMEMBER', PAUSED, unpack(names))) do
    Q[i].paused = flag == 1
  end
end
for i = 1, NQ do
  if Q[i].paused then LIVE = LIVE - 1 end
end

local function promote(q)
  local due = redis.call('ZRANGEBYSCORE', q.scheduled, '-inf', NOW_ARG, 'LIMIT', '0', MOVE_LIMIT)
  for _, id in ipairs(due) do
    redis.call('ZREM', q.scheduled, id)
    local key = JOB_PREFIX .. id
    local job = load_job(key)
    if job and job.status == 'scheduled' then push_ready(q, key, id, job.priority) end
  end
end

-- An expired lease: its worker is gone. The job goes to the back of its line, as in the
-- reference broker, and its next delivery counts.
local function reclaim(q)
  local gone = redis.call('ZRANGEBYSCORE', q.running, '-inf', NOW_ARG, 'LIMIT', '0', MOVE_LIMIT)
  for _, id in ipairs(gone) do
    redis.call('ZREM', q.running, id)
    local key = JOB_PREFIX .. id
    local job = load_job(key)
    if job and job.status == 'running' and job.cancel == '1' then
      end_cancelled(q, key, job, id, UNIQUE)
    elseif job and job.status == 'running' then
      drop_entry(q.s[tonumber(job.priority)], job.sid, key)
      push_ready(q, key, id, job.priority)
    end
  end
end

-- Bookkeeping for one entry this consumer now holds; nil (entry dropped) when stale.
-- (Lean on purpose: every table and string a script makes costs the server about a
-- microsecond when it sat idle, so the usual entry ["job", id, "payload", p] is read in
-- place and the job hash by HMGET of the fields used, not HGETALL.) The payload is the
-- entry's when it carries one, else the job hash's (a job that was scheduled, retried,
-- handed back or promoted: see _keys.py). `first`: the entry was read as new (XREADGROUP
-- '>'), not claimed back by the sweep.
local function deliver(q, p, sid, flat, first)
  local id, f = flat[1] == 'job' and (#flat == 2 or (#flat == 4 and flat[3] == 'payload'))
    and flat[2], nil
  if not id then
    f = fields_of(flat)
    id = f.job
  end
  if not id then
    -- Written straight into the stream: hand it out raw; the worker dead-letters it.
    id = 'raw-' .. sid
    redis.call('DEL', JOB_PREFIX .. id)
    redis.call('HSET', JOB_PREFIX .. id, 'queue', q.name, 'priority', p, 'sid', sid,
      'payload', f.payload or cjson.encode(flat), 'status', 'queued', 'deliveries', 0,
      'key', '', 'cancel', '0', 'updated_at', NOW, 'expires_at', '', 'result', '', 'reason', '')
  end
  local key = JOB_PREFIX .. id
  local in_entry = not f and flat[4]
  given = given + 1  -- a token of its own (a multi-queue round collects before `out`)
  local token = ARGV[TOKEN_BASE + given]
  local n
  if in_entry and first then
    -- A job's first delivery: only enqueue writes an entry that carries the payload (a job
    -- that outlives its entry gets one without), and every script that takes a queued job
    -- out of line (cancel, delete, purge, finish, reclaim, release) deletes its entry in the
    -- same step, so a new entry with a payload is a queued job's own, never delivered: the
    -- lease is written without reading the hash first (one call, not two). Enqueue wrote
    -- status, sid, queue, priority and updated_at, none of token, deliveries and consumer,
    -- so HSET adds 3 fields. 5: there was no record (its hash went by hand or by eviction),
    -- which is put back as it was and the entry dropped, as a stale one below. Fewer: the
    -- record had some of the lease's fields (enqueue before 6916008 wrote a zero count; or
    -- the job was delivered and its entry read again as new, its group set back or
    -- recreated by hand): it goes out, its count 1 (started anew in the latter case).
    -- Not told without a read: a record gone by hand or evicted whose id was enqueued again
    -- (a new record, a new entry) before this entry is read; both entries go out, this one
    -- with its old payload, and it stays pending until the sweep drops it.
    n = 1
    local added = redis.call('HSET', key, 'status', 'running', 'token', token,
      'deliveries', '1', 'consumer', CONSUMER, 'updated_at', NOW_ARG)
    if added == 5 then
      redis.call('HDEL', key, 'status', 'token', 'deliveries', 'consumer', 'updated_at')
      drop_entry(q.s[p], sid)
      given = given - 1
      return nil
    end
  else
    -- (Its payload only when the entry has none, and no expires_at: only an ended job has
    -- one, and an ended job is stale here; requeue clears it. A field read costs the server
    -- a walk of the compact hash, the whole of it for a field that is not there.)
    local job = in_entry and redis.call('HMGET', key, 'status', 'sid', 'deliveries')
      or redis.call('HMGET', key, 'status', 'sid', 'deliveries', 'payload')
    local status = job[1]
    if not status or job[2] ~= sid or (status ~= 'queued' and status ~= 'running') then
      drop_entry(q.s[p], sid)
      given = given - 1
      return nil
    end
    n = (tonumber(job[3]) or 0) + 1  -- enqueue writes no count: none yet
    -- (The lease's expiry is the job's score in the running index, not a field: each field
    -- an HSET writes into a compact hash costs the server about half a microsecond.)
    redis.call('HSET', key, 'status', 'running', 'token', token, 'deliveries', DIGITS[n],
      'consumer', CONSUMER, 'updated_at', NOW_ARG)
    -- (A job without payload anywhere, e.g. written by hand, goes out empty: the worker
    -- dead-letters it, and the rest of the reply is not lost with it.)
    in_entry = in_entry or job[4] or ''
  end
  local add = leased[q.running]
  if not add then add = {}; leased[q.running] = add end
  local k = #add
  add[k + 1] = LEASE_AT
  add[k + 2] = id
  return {id, q.name, in_entry, token, n, p}
end

-- The running-index entries deliver put off, added once per index before the script ends
-- (nothing in this script reads them meanwhile).
local function lease_all()
  for running, add in pairs(leased) do
    for i = 1, #add, UNPACK_MAX do
      redis.call('ZADD', running, unpack(add, i, math.min(i + UNPACK_MAX - 1, #add)))
    end
  end
end

-- One claimed entry: back to a live owner, or delivered here (an orphan).
local function adopt(q, p, stream, sid)
  local entry = redis.call('XRANGE', stream, sid, sid)[1]
  local id = entry and fields_of(entry[2]).job or ''
  local job = entry and load_job(JOB_PREFIX .. id)
  local lease = job and job.status == 'running' and job.sid == sid
    and redis.call('ZSCORE', q.running, id)
  if not entry then
    redis.call('XACK', stream, GROUP, sid)
  elseif lease and tonumber(lease) > NOW then
    -- A live lease whose worker has not renewed lately: give the entry straight back.
    redis.call('XCLAIM', stream, GROUP, job.consumer, 0, sid, 'JUSTID')
  else
    local d = deliver(q, p, sid, entry[2], false)
    if d then table.insert(out, d) end
  end
end

-- Stopped or dead workers leave their consumer names in every group; drop the idle ones
-- that hold nothing (a consumer with pending entries is never deleted: that would drop the
-- entries from the pending list).
local function reap(q, marked)
  if REAP_EVERY <= 0 or marked then return end
  allow_oom()  -- the marker may be this call's first write: a worker drains a full Redis
  if redis.call('SET', q.reap, '1', 'NX', 'PX', REAP_EVERY) == false then return end
  for p = 0, 9 do drop_idle_consumers(q.s[p], nil, REAP_IDLE) end
end

local SWEEP_CALLS = 10  -- bounds one sweep's work; the cursor walks past live entries
local function sweep(q, marked)
  if marked then return end
  allow_oom()  -- the marker may be this call's first write: a worker drains a full Redis
  if redis.call('SET', q.sweep, '1', 'NX', 'PX', SWEEP_MS) == false then return end
  for p = 9, 0, -1 do
    local stream = q.s[p]
    local cursor = '0-0'
    local calls = 0
    while #out < COUNT and calls < SWEEP_CALLS and redis.call('EXISTS', stream) == 1 do
      calls = calls + 1
      local ok, res = pcall(redis.call, 'XAUTOCLAIM', stream, GROUP, CONSUMER, SWEEP_MS,
        cursor, 'COUNT', COUNT - #out, 'JUSTID')
      if not ok then break end
      for _, sid in ipairs(res[2]) do adopt(q, p, stream, sid) end
      cursor = res[1]
      if cursor == '0-0' then break end
    end
  end
end

-- The group's last delivered id, creating a missing group (the stream was written without
-- one, or Redis lost it) from the start, reported so the client warns loudly.
local function last_delivered(stream)
  if redis.call('EXISTS', stream) == 0 then return nil end
  local info = group_info(stream)
  if info then return info['last-delivered-id'] end
  allow_oom()  -- may be this call's first write (see reap)
  redis.call('XGROUP', 'CREATE', stream, GROUP, '0')
  recreated = recreated + 1
  return '0-0'
end

-- The single queue's priority levels whose stream exists (see "Levels" above), found
-- after promote and reclaim (which may create a stream).
local LEVELS = {}
local function find_levels()
  local others, streams = {}, {}
  for p = 0, 9 do
    if string.byte(HINT, p + 1) == 49 then  -- '1'
      LEVELS[p] = true
    else
      others[#others + 1] = p
      streams[#streams + 1] = Q[1].s[p]
    end
  end
  if #streams > 0 and redis.call('EXISTS', unpack(streams)) > 0 then
    for _, p in ipairs(others) do LEVELS[p] = redis.call('EXISTS', Q[1].s[p]) == 1 end
  end
end

-- One queue: XREADGROUP hands out its oldest undelivered entries itself, so the peek and
-- the merge below are not needed. Returns entries read, or nil when the group is missing
-- (the general path below recreates it and reports it).
local function read_single(p, want)
  local stream = Q[1].s[p]
  if not LEVELS[p] then return 0 end
  local ok, res = pcall(redis.call, 'XREADGROUP', 'GROUP', GROUP, CONSUMER, 'COUNT', DIGITS[want],
    'STREAMS', stream, '>')
  if not ok then
    if redis.call('EXISTS', stream) == 0 then  -- gone since the hint
      LEVELS[p] = false
      return 0
    end
    return nil
  end
  if not res then return 0 end
  local entries, q = res[1][2], Q[1]
  for i = 1, #entries do
    local e = entries[i]
    local d = deliver(q, p, e[1], e[2], true)
    if d then out[#out + 1] = d end
  end
  return #entries
end

-- One round at priority p: peek the oldest undelivered entries of every queue, take the
-- oldest `want` overall, and read exactly those with XREADGROUP. Returns entries read.
-- Oldest: by entry id, then by job id (streams of two queues may give entries written in
-- the same ms the same id; the job id settles it, as queued.lua lists them).
local function read_level(p, want)
  if NQ == 1 then
    local n = read_single(p, want)
    if n ~= nil then return n end
  end
  local cands = {}
  for i = 1, NQ do
    local last = not Q[i].paused and last_delivered(Q[i].s[p])
    if last then
      for _, e in ipairs(redis.call('XRANGE', Q[i].s[p], '(' .. last, '+', 'COUNT', want)) do
        table.insert(cands, {e[1], i, e[2]})
      end
    end
  end
  table.sort(cands, function(a, b)
    if a[1] ~= b[1] then return sid_less(a[1], b[1]) end
    return job_of(a[1], a[3]) < job_of(b[1], b[3])
  end)
  local take = {}
  for i = 1, math.min(want, #cands) do take[cands[i][2]] = (take[cands[i][2]] or 0) + 1 end
  local got = {}
  for i, n in pairs(take) do
    local res = redis.call('XREADGROUP', 'GROUP', GROUP, CONSUMER, 'COUNT', n,
      'STREAMS', Q[i].s[p], '>')
    for _, e in ipairs(res and res[1][2] or {}) do
      local d = deliver(Q[i], p, e[1], e[2], true)
      if d then d.sid = e[1]; table.insert(got, d) end
    end
  end
  table.sort(got, function(a, b)
    if a.sid ~= b.sid then return sid_less(a.sid, b.sid) end
    return a[1] < b[1]
  end)
  for _, d in ipairs(got) do d.sid = nil; table.insert(out, d) end
  return #cands
end

local function next_event()
  local best = -1
  for i = 1, NQ do
    for _, z in ipairs({Q[i].scheduled, Q[i].running}) do
      local first = redis.call('ZRANGE', z, '0', '0', 'WITHSCORES')
      if first[2] and first[2] ~= 'inf' and (best < 0 or tonumber(first[2]) < best) then best = tonumber(first[2]) end
    end
  end
  if best < 0 then return -1 end
  return math.max(best - NOW, 0)
end

-- Woken: sent right behind the XREAD a worker sleeps in, so it runs the moment an entry
-- arrives. With one queue, the levels known to be in use are read first, and when that
-- delivers, the rest (promote, reclaim, reap, sweep) is left to the worker's next fetch,
-- which always begins with a full call: the job reaches the worker sooner.
if WOKEN and NQ == 1 and COUNT > 0 and LIVE == 1 then
  for p = 9, 0, -1 do
    LEVELS[p] = string.byte(HINT, p + 1) == 49  -- '1'
    if LEVELS[p] and #out < COUNT then read_single(p, COUNT - #out) end
  end
  if #out > 0 then
    lease_all()
    return {out, -1, recreated, {}, HINT}
  end
end

local marks = {}  -- per queue: {sweep marker, reap marker}, one MGET
for i = 1, NQ do
  marks[i] = redis.call('MGET', Q[i].sweep, Q[i].reap)
  promote(Q[i]); reclaim(Q[i]); reap(Q[i], marks[i][2])
end
if COUNT > 0 then
  for i = 1, NQ do
    if not Q[i].paused then sweep(Q[i], marks[i][1]) end
  end
end
if NQ == 1 then find_levels() end
local READ = LIVE > 0 and COUNT or 0
for p = 9, 0, -1 do
  while #out < READ do
    local want = COUNT - #out
    if read_level(p, want) < want then break end  -- fewer than asked: the level is empty
  end
end
local levels = ''
if NQ == 1 then
  local bits = {}
  for p = 0, 9 do bits[p + 1] = LEVELS[p] and '1' or '0' end
  levels = table.concat(bits)
end
if #out > 0 then
  lease_all()
  return {out, -1, recreated, {}, levels}
end
local last_ids = {}
for i = 1, NQ do
  for p = 0, 9 do
    local top = nil
    if NQ > 1 or LEVELS[p] then  -- a stream that does not exist: from the start
      top = redis.call('XREVRANGE', Q[i].s[p], '+', '-', 'COUNT', 1)[1]
    end
    table.insert(last_ids, top and top[1] or '0-0')
  end
end
-- The resume signal stream's last id, for the caller to block on too: a paused queue's
-- resume, and a job scheduled to come due soon (common.lua due_soon), wake it.
local top = redis.call('XREVRANGE', RESUMED, '+', '-', 'COUNT', 1)[1]
table.insert(last_ids, top and top[1] or '0-0')
return {out, next_event(), recreated, last_ids, levels}
