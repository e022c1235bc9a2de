-- Record how each of a batch of deliveries ended, in one atomic step (one script call for
-- many jobs, so a flood of tiny jobs costs one round trip and one argument list per batch).
-- Per delivery, refused for a stale token: ack and delete the stream entry, store status
-- and result with their TTL, signal waiters; for a retry put the job back (scheduled or
-- queued) with its new payload instead. A job that ends other than succeeded keeps its
-- payload (moved into its hash from the entry, where enqueue put it); a succeeded one
-- keeps its result only.
-- KEYS: unique, queues, then 18 keys for each queue named in ARGV.
-- ARGV[5] number of queues NQ, ARGV[6..5+NQ] their names, then per delivery 4 values:
--   job id, token, shape, result; the shape is '<status> <ttl ms> <delivery queue #> <m>'
--   (_calls.finish_values), the same for most outcomes of a call, so it is read once per call
--   (SHAPES); m '1': the reason follows, '2': the reason and a retry follow (retry payload,
--   priority, eta ('', '+' ms from now), key, queue #), '0': neither (reason ''). (A record as
--   short as its outcome: every argument costs the server time to read, ~1,500
--   instructions, and most outcomes are a success with no reason and no retry.)
-- Carrying events (common.lua carried): after the outcomes, the entry bodies (the call's own
-- events, then those of the outcomes that have one, framed and joined EVENTS_PER_ENTRY to
-- a body, the last body the rest), then how many of the call's own there are, which
-- outcomes have one ('1' or '0' each, in order), and how many bodies. The call's are
-- published first, each outcome's only if it is recorded (not for a repeat): when all
-- are, the bodies go in as they came (no string per event, no join).
-- Returns one 1 (recorded) or 0 (refused: the lease is lost) per delivery.
local UNIQUE, QUEUES = KEYS[1], KEYS[2]
local NQ = tonumber(ARGV[5])
local CAP, LAST = carried()
local Q = {}
for i = 1, NQ do Q[i] = qkeys(3 + (i - 1) * QK); Q[i].name = ARGV[5 + i] end

-- What ended and release_key read of a job that has no unique key, no dependents and no
-- waiter (the usual one): nothing.
local PLAIN = {}

-- Put off to the end, once per key for the whole batch (nothing in this script reads them
-- meanwhile; a job named twice in one call is refused or 'again' the second time, by its
-- hash, which is written at once): XACK and XDEL per stream, ZREM per running index, the
-- trim and ZADD of the status indexes.
local dropped = {}  -- stream -> entry ids
local stopped = {}  -- running index -> job ids
local later = {}    -- status index -> {score, id, ...}
local listed = {}   -- queues known to be in the QUEUES set in this call
local freed = false -- a ZREM was sent already (below)
local recorded = {}  -- by outcome: its event is published (it has one and was recorded)
local skipped = false  -- an outcome's event is not: the bodies cannot go as they came

-- What a shape says, read once per call and shape (`tonumber` alone costs ~1,000
-- instructions: two strtod): its status, queue, how many values the outcome has, the
-- record's expiry and real TTL as arguments (common.lua ended), and per priority field
-- ('0'..'9', as the job hash has it) the queue's stream.
local SHAPES = setmetatable({}, {__index = function(shapes, shape)
  local status, ttl, place, m = string.match(shape, '^(%a+) (%d+) (%d+) ([012])$')
  local ms, q = tonumber(ttl), Q[tonumber(place)]
  local sh = {status = status, q = q, m = m, step = m == '0' and 4 or (m == '1' and 5 or 10),
    expires = DIGITS[NOW + ms], keep = DIGITS[ms + GC_GRACE_MS],
    stream = setmetatable({}, {__index = function(by, prio)
      local stream = q.s[tonumber(prio)]
      rawset(by, prio, stream)
      return stream
    end})}
  rawset(shapes, shape, sh)
  return sh
end})

local function put_off(into, key, value)
  local list = into[key]
  if not list then list = {}; into[key] = list end
  list[#list + 1] = value
end

-- (The fence reads the fields it needs with HMGET, not the whole hash, in place: a table of
-- them for each job cost the server more than the read. No expiry check: only an ended job
-- has one, and an ended job is refused, or, ended by this very delivery, answered 'again',
-- which holds as well after its record expired. See common.lua fence.)
local function finish_one(a, n, event, sh)
  local id, token, result = ARGV[a], ARGV[a + 1], ARGV[a + 3]
  local key = JOB_PREFIX .. id
  local f = redis.call('HMGET', key, 'status', 'token', 'priority', 'sid', 'key', 'deps',
    'waited', 'settled_by')
  local settled = fence(f[1] or nil, f[2], f[8], token)
  if settled ~= 'owned' then
    if event then skipped = true end
    return settled == 'again' and 1 or 0
  end
  local job = PLAIN
  if f[5] or f[6] or f[7] then
    job = {key = f[5] or nil, deps = f[6] or nil, waited = f[7] or nil}
  end
  local q, sid = sh.q, f[4] or nil
  local stream = sid and sid ~= '' and sh.stream[f[3]]
  recorded[n] = event
  if stream then put_off(dropped, stream, sid) end
  if freed then
    put_off(stopped, q.running, id)
  else
    -- The first job the call ends leaves its running index at once: a write that takes no
    -- memory, before any that may, lets the rest through on a full Redis (common.lua
    -- allow_oom), where finishing is what frees memory. A lone finish sends no more.
    redis.call('ZREM', q.running, id)
    freed = true
  end
  local reason = sh.m == '0' and '' or ARGV[a + 4]
  if sh.m == '2' then
    local rq = Q[tonumber(ARGV[a + 9])]
    local existed = place(rq, key, id, ARGV[a + 6], ARGV[a + 7], {'settled_by', token,
      'payload', ARGV[a + 5], 'priority', ARGV[a + 6], 'key', ARGV[a + 8], 'queue', rq.name,
      'deliveries', '0', 'result', result, 'reason', reason, 'updated_at', DIGITS[NOW],
      'cancel', '0'})
    if not listed[rq.name] then  -- a queue whose stream exists is listed (add_entry)
      if not existed then redis.call('SADD', QUEUES, rq.name) end
      listed[rq.name] = true
    end
    return 1
  end
  -- (Its sid stays: the entry goes below, and nothing reads an ended job's sid.)
  -- Kept for inspection and requeue unless it succeeded: a payload the entry carries moves
  -- into the hash.
  local status = sh.status
  local payload = status ~= 'succeeded' and stream and entry_payload(stream, sid)
  if payload then
    ended(q, key, job, id, status, sh.expires, sh.keep, later, 'settled_by', token,
      'result', result, 'reason', reason, 'payload', payload)
  elseif reason ~= '' or f[8] then
    ended(q, key, job, id, status, sh.expires, sh.keep, later, 'settled_by', token,
      'result', result, 'reason', reason)
  else
    -- No reason to write, and none written before: only a job settled once already
    -- (settled_by: retried) can have one, and a field not written reads as empty (_keys.py).
    -- A field less to add costs the server less, and the record takes less memory.
    ended(q, key, job, id, status, sh.expires, sh.keep, later, 'settled_by', token,
      'result', result)
  end
  if job ~= PLAIN then release_key(UNIQUE, job, id) end
  return 1
end

-- The events to publish, one by one, when some outcome's is not: the bodies cut back into
-- framed events ('<length>:<bytes>'), the call's own and those of the outcomes recorded.
local function kept(first, n_bodies, n_call, flags)
  local out, seen, n = {}, 0, 0  -- n: the outcome whose event is next
  for k = first, first + n_bodies - 1 do
    local body, at = ARGV[k], 1
    while at <= #body do
      local colon = string.find(body, ':', at, true)
      local stop = colon + tonumber(string.sub(body, at, colon - 1))
      seen = seen + 1
      local mine = seen <= n_call
      if not mine then
        n = string.find(flags, '1', n + 1, true)
        mine = recorded[n]
      end
      if mine then out[#out + 1] = string.sub(body, at, stop) end
      at = stop + 1
    end
  end
  return out
end

local out = {}
local a, last = 6 + NQ, LAST
local n_bodies, n_call, flags = 0, 0, ''
if CAP then
  n_bodies, flags, n_call = tonumber(ARGV[LAST]), ARGV[LAST - 1], tonumber(ARGV[LAST - 2])
  last = LAST - 3 - n_bodies
end
local events = n_call  -- in the bodies
local each = #flags > 0 and not string.find(flags, '0', 1, true)  -- every outcome has one
local n = 0
while a <= last do
  n = n + 1
  local event = each or string.byte(flags, n) == 49  -- '1': it has one
  if event then events = events + 1 end
  local sh = SHAPES[ARGV[a + 2]]
  out[n] = finish_one(a, n, event, sh)
  a = a + sh.step
end
for stream, sids in pairs(dropped) do
  redis.call('XACK', stream, GROUP, unpack(sids))
  redis.call('XDEL', stream, unpack(sids))
end
for running, ids in pairs(stopped) do redis.call('ZREM', running, unpack(ids)) end
add_indexed(later)
if n_bodies > 0 then
  -- A call that recorded no outcome (every delivery refused or a repeat) publishes only the
  -- worker's own events: their counter's INCRBY would then be its first write, refused on
  -- a full Redis, failing the whole call. They take little and the stream is capped.
  if not freed then allow_oom() end
  if skipped then
    publish(CAP, kept(last + 1, n_bodies, n_call, flags))
  else
    append_entries(CAP, {unpack(ARGV, last + 1, last + n_bodies)}, events)
  end
end
return out
