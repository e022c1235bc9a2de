-- Record how each of a batch of deliveries ended, in one atomic step (one script call for
-- many jobs, so a flood of tiny jobs costs one round trip and one argument list per batch).
-- Per delivery, refused for a stale token: ack and delete the stream entry, store status
-- and result with their TTL, signal waiters; for a retry put the job back (scheduled or
-- queued) with its new payload instead. A job that ends other than succeeded keeps its
-- payload (moved into its hash from the entry, where enqueue put it); a succeeded one
-- keeps its result only.
-- KEYS: unique, queues, then 18 keys for each queue named in ARGV.
-- ARGV[5] number of queues NQ, ARGV[6..5+NQ] their names, then per delivery 8 values:
--   job id, token, status, result, ttl (ms), reason, delivery queue # (1-based), has_retry;
-- and after a has_retry '1', 5 more: retry payload, retry priority, retry eta ('', '+' ms from now),
--   retry key, retry queue #. (A record as short as its outcome: every argument costs the
--   server time to read, and most outcomes are no retry.)
-- Returns one 1 (recorded) or 0 (refused: the lease is lost) per delivery.
local UNIQUE, QUEUES = KEYS[1], KEYS[2]
local NQ = tonumber(ARGV[5])
local Q = {}
for i = 1, NQ do Q[i] = qkeys(3 + (i - 1) * QK); Q[i].name = ARGV[5 + i] end

-- Only the fields the fence and the ending read (HMGET, not the whole hash).
-- (No expiry check: only an ended job has one, and an ended job is refused, or, ended by
-- this very delivery, answered 'again', which holds as well after its record expired.)
local function load_fenced(key)
  local f = redis.call('HMGET', key, 'status', 'token', 'settled_by', 'priority', 'sid', 'key',
    'deps', 'waited')
  if not f[1] then return nil end
  return {status = f[1], token = f[2] or nil, settled_by = f[3] or nil, priority = f[4] or nil,
    sid = f[5] or nil, key = f[6] or nil, deps = f[7] or nil, waited = f[8] or nil}
end

-- Put off to the end, once per key for the whole batch (nothing in this script reads them
-- meanwhile; a job named twice in one call is refused or 'again' the second time, by its
-- hash, which is written at once): XACK and XDEL per stream, ZREM per running index, the
-- trim and ZADD of the status indexes.
local dropped = {}  -- stream -> entry ids
local stopped = {}  -- running index -> job ids
local later = {}    -- status index -> {score, id, ...}
local listed = {}   -- queues known to be in the QUEUES set in this call
local freed = false -- a ZREM was sent already (below)

local function put_off(into, key, value)
  local list = into[key]
  if not list then list = {}; into[key] = list end
  list[#list + 1] = value
end

local function finish_one(a)
  local id = ARGV[a]
  local token = ARGV[a + 1]
  local key = JOB_PREFIX .. id
  local job = load_fenced(key)
  local fence = settle(job, token)
  if fence ~= 'owned' then return fence == 'again' and 1 or 0 end
  local q = Q[tonumber(ARGV[a + 6])]
  local status, result, ttl_ms, reason = ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4]), ARGV[a + 5]
  if job.sid and job.sid ~= '' then put_off(dropped, q.s[tonumber(job.priority)], job.sid) end
  if freed then
    put_off(stopped, q.running, id)
  else
    -- The first job the call ends leaves its running index at once: a write that takes no
    -- memory, before any that may, lets the rest through on a full Redis (common.lua
    -- allow_oom), where finishing is what frees memory. A lone finish sends no more.
    redis.call('ZREM', q.running, id)
    freed = true
  end
  if ARGV[a + 7] == '1' then
    local rq = Q[tonumber(ARGV[a + 12])]
    local existed = place(rq, key, id, ARGV[a + 9], ARGV[a + 10], {'settled_by', token,
      'payload', ARGV[a + 8], 'priority', ARGV[a + 9], 'key', ARGV[a + 11], 'queue', rq.name,
      'deliveries', 0, 'result', result, 'reason', reason, 'updated_at', NOW, 'cancel', '0'})
    if not listed[rq.name] then  -- a queue whose stream exists is listed (add_entry)
      if not existed then redis.call('SADD', QUEUES, rq.name) end
      listed[rq.name] = true
    end
    return 1
  end
  -- (Its sid stays: the entry goes below, and nothing reads an ended job's sid.)
  local fields = {'settled_by', token, 'result', result, 'reason', reason}
  if status ~= 'succeeded' and job.sid and job.sid ~= '' then
    -- Kept for inspection and requeue: a payload the entry carries moves into the hash.
    local payload = entry_payload(q.s[tonumber(job.priority)], job.sid)
    if payload then
      fields[#fields + 1] = 'payload'
      fields[#fields + 1] = payload
    end
  end
  terminate(q, key, job, id, status, ttl_ms, fields, later)
  release_key(UNIQUE, job, id)
  return 1
end

local out = {}
local a, last = 6 + NQ, #ARGV
while a <= last do
  out[#out + 1] = finish_one(a)
  a = a + (ARGV[a + 7] == '1' and 13 or 8)
end
for stream, sids in pairs(dropped) do
  redis.call('XACK', stream, GROUP, unpack(sids))
  redis.call('XDEL', stream, unpack(sids))
end
for running, ids in pairs(stopped) do redis.call('ZREM', running, unpack(ids)) end
add_indexed(later)
return out
