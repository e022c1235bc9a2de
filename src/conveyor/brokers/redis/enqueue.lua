-- Enqueue a batch of jobs (one or many), in order, in one atomic step.
-- KEYS: unique, queues (the queues' own keys are computed: common.lua queue_named).
-- ARGV[5]: values per job, 7 or 4; ARGV[6]: number of queues n; ARGV[7..6+n]: their names;
-- then per job: id, queue index (1..n), payload, priority, and with 7: eta ('', '+' ms from
-- now, or 'parked'), unique key ('' or the key), depends_on (ids joined by ',', or ''); 4
-- for a batch of jobs due now without either (each value costs the server time: a batch
-- of task.s() sends no empty ones). Carrying events (common.lua carried): one
-- per job after all the jobs (job.enqueued, or ''), published only with a job written; or,
-- ending in '!j' instead of '!e', joined by the client into entry bodies as they are
-- stored (_eventlog.bodies: no empty one), then their count, the cap and '!j': appended
-- as they are when every job of the call is written (the usual call: the server makes no
-- string per event and joins none), else cut back into events.
-- Returns the job ids, in order: the existing one where an equal unique key is pending;
-- then the length of the stream the call's last job due now went into (-1: none), the load
-- a sharded prefix's producers place jobs by (_sharded.py), at the cost of one XLEN;
-- or {'!missing', job id, dependency id}, having written nothing, when a dependency names
-- no live job and no job earlier in the call (the client sends a batch with dependencies
-- as one call, so that is all of it).
-- Idempotent on the id: a retried command (timeout after the server applied it) that
-- finds the job already there writes nothing, so a job is never enqueued twice.
-- A job due now has its payload in its stream entry and a small job hash (a few short
-- fields: Redis keeps it compact); a scheduled or waiting one keeps it in the hash.
local UNIQUE, QUEUES = KEYS[1], KEYS[2]
local PER_JOB = tonumber(ARGV[5])
local NQ = tonumber(ARGV[6])
local BASE = 7 + NQ
local CAP, LAST = carried()
local BODIES = 0  -- events joined into this many entry bodies
if ARGV[#ARGV] == '!j' then
  CAP, BODIES = ARGV[#ARGV - 1], tonumber(ARGV[#ARGV - 2])
  LAST = #ARGV - 3 - BODIES
end
local N = (LAST - BASE + 1) / ((CAP and BODIES == 0) and PER_JOB + 1 or PER_JOB)
local EV = BASE + N * PER_JOB  -- job j's event (j from 0): ARGV[EV + j]; or the bodies

local Q = {}
for i = 1, NQ do Q[i] = queue_named(ARGV[6 + i]) end

-- Every dependency must be known before anything is written (4 values per job: none).
for j = 0, PER_JOB == 7 and N - 1 or -1 do
  if ARGV[BASE + j * PER_JOB + 6] ~= '' then
    local earlier = {}
    for k = 0, N - 1 do
      local a = BASE + k * PER_JOB
      for dep in string.gmatch(ARGV[a + 6], '[^,]+') do
        if not earlier[dep] and not live_status(dep) then return {'!missing', ARGV[a], dep} end
      end
      earlier[ARGV[a]] = true
    end
    break
  end
end

-- One EXISTS over the whole batch: a new job (the usual case) needs no lookup of its own.
local any_exist
if N == 1 then  -- a single job: no batch tables
  any_exist = redis.call('EXISTS', JOB_PREFIX .. ARGV[BASE], DONE_PREFIX .. ARGV[BASE]) > 0
else
  local probe = {}
  for j = 0, N - 1 do
    local id = ARGV[BASE + j * PER_JOB]
    probe[#probe + 1] = JOB_PREFIX .. id
    probe[#probe + 1] = DONE_PREFIX .. id
  end
  any_exist = false
  for i = 1, #probe, UNPACK_MAX do  -- a batch with dependencies is one call, any size
    if redis.call('EXISTS', unpack(probe, i, math.min(i + UNPACK_MAX - 1, #probe))) > 0 then
      any_exist = true
      break
    end
  end
end
local written = {}  -- ids written by this call (an id repeated in the batch is written once)
local published = {}  -- the events of the jobs written, published at the end
local wrote, n_wrote = {}, 0  -- with joined events: the jobs written (j), how many
local listed = {}   -- queues known to be in the QUEUES set in this call
local last_stream  -- the stream of the last job written due now (its length is returned)

local function enqueue_one(j, id, q, payload, prio, eta, ukey, deps)
  eta = eta_at(eta)
  local key, done = JOB_PREFIX .. id, DONE_PREFIX .. id
  if written[id] then return id end
  if any_exist and redis.call('EXISTS', key, done) > 0 then
    if load_job(key) then return id end
    redis.call('DEL', key, done)  -- an expired record, or a signal of one: start afresh
  end
  if ukey ~= '' then
    local other = redis.call('HGET', UNIQUE, ukey)
    if other then
      local ojob = load_job(JOB_PREFIX .. other)
      if ojob and (ojob.status == 'queued' or ojob.status == 'scheduled'
          or ojob.status == 'running') then
        return other
      end
    end
    redis.call('HSET', UNIQUE, ukey, id)
  end
  written[id] = true
  -- A new hash: fields with nothing in them yet (token eta cancel expires_at result
  -- reason) are left out; every reader takes a missing field as empty.
  local waiting = deps ~= '' and wait_for(id, deps) or 0
  -- Waiting for dependencies: parked (eta 'waiting': promote leaves it) until the last ends.
  if waiting > 0 then eta = 'waiting' end
  local existed = false  -- went into a stream that existed: the queue is listed (add_entry)
  if eta == 'waiting' or eta == 'parked' or (eta ~= '' and tonumber(eta) > NOW) then
    redis.call('HSET', key, 'status', 'scheduled', 'eta', eta, 'waiting', waiting,
      'after', deps, 'queue', q.name, 'payload', payload, 'priority', prio, 'deliveries', 0,
      'updated_at', DIGITS[NOW], 'key', ukey)
    redis.call('ZADD', q.scheduled, (eta == 'waiting' or eta == 'parked') and '+inf' or eta, id)
    if eta ~= 'waiting' and eta ~= 'parked' then due_soon(q.name, eta) end
  else  -- due now: the payload rides in the stream entry
    last_stream = q.s[tonumber(prio)]
    existed = enter(last_stream, key, id, q.name, prio, payload, ukey, DIGITS[NOW])
  end
  if not listed[q.name] then
    if not existed then redis.call('SADD', QUEUES, q.name) end
    listed[q.name] = true
  end
  if BODIES > 0 then
    wrote[j], n_wrote = true, n_wrote + 1
  elseif CAP and ARGV[EV + j] ~= '' then
    published[#published + 1] = ARGV[EV + j]
  end
  return id
end

-- The joined events of the jobs written, cut out of the bodies (framed '<length>:<bytes>',
-- job j's the j-th).
local function written_events()
  local out, j = {}, 0
  for k = EV, EV + BODIES - 1 do
    local body, at = ARGV[k], 1
    while at <= #body do
      local colon = string.find(body, ':', at, true)
      local stop = colon + tonumber(string.sub(body, at, colon - 1))
      if wrote[j] then out[#out + 1] = string.sub(body, at, stop) end
      j, at = j + 1, stop + 1
    end
  end
  return out
end

local out = {}
for j = 0, N - 1 do
  local a = BASE + j * PER_JOB
  if PER_JOB == 7 then
    out[j + 1] = enqueue_one(j, ARGV[a], Q[tonumber(ARGV[a + 1])], ARGV[a + 2], ARGV[a + 3],
      ARGV[a + 4], ARGV[a + 5], ARGV[a + 6])
  else
    out[j + 1] = enqueue_one(j, ARGV[a], Q[tonumber(ARGV[a + 1])], ARGV[a + 2], ARGV[a + 3],
      '', '', '')
  end
end
if BODIES == 0 then
  if CAP then publish(CAP, published) end
elseif n_wrote == N then
  append_entries(CAP, {unpack(ARGV, EV, EV + BODIES - 1)}, N)
else
  publish(CAP, written_events())
end
out[N + 1] = last_stream and redis.call('XLEN', last_stream) or -1
return out
