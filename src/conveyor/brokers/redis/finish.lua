-- Record how each of a batch of deliveries ended, in one atomic step (one script call for
-- many jobs, so a flood of tiny jobs costs one round trip and one argument list per batch).
-- Per delivery, refused for a stale token: ack and delete the stream entry, store status
-- and result with their TTL, signal waiters; for a retry put the job back (scheduled or
-- queued) with its new payload instead.
-- KEYS: unique, queues, then 19 keys for each queue named in ARGV.
-- ARGV[5] number of queues NQ, ARGV[6..5+NQ] their names, then per delivery FIELDS values:
--   job id, token, status, result, ttl (ms), reason, has_retry, retry payload,
--   retry priority, retry eta ('' or ms), retry key, delivery queue #, retry queue # (1-based).
-- Returns one 1 (recorded) or 0 (refused: the lease is lost) per delivery.
local UNIQUE, QUEUES = KEYS[1], KEYS[2]
local NQ = tonumber(ARGV[5])
local FIELDS = 13
local Q = {}
for i = 1, NQ do Q[i] = qkeys(3 + (i - 1) * QK); Q[i].name = ARGV[5 + i] end

local function finish_one(a)
  local id = ARGV[a]
  local token = ARGV[a + 1]
  local key = JOB_PREFIX .. id
  local job = load_job(key)
  local fence = settle(key, job, token)
  if fence ~= 'owned' then return fence == 'again' and 1 or 0 end
  local q = Q[tonumber(ARGV[a + 11])]
  local status, result, ttl_ms, reason = ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4]), ARGV[a + 5]
  drop_entry(q.s[tonumber(job.priority)], job.sid)
  redis.call('ZREM', q.running, id)
  if ARGV[a + 6] == '1' then
    local rq = Q[tonumber(ARGV[a + 12])]
    redis.call('HSET', key, 'payload', ARGV[a + 7], 'priority', ARGV[a + 8], 'key', ARGV[a + 10],
      'queue', rq.name, 'deliveries', 0, 'result', result, 'reason', reason,
      'updated_at', NOW, 'cancel', '0', 'lease_until', '')
    redis.call('SADD', QUEUES, rq.name)
    place(rq, key, id, ARGV[a + 8], ARGV[a + 9])
    return 1
  end
  redis.call('HSET', key, 'result', result, 'reason', reason, 'sid', '')
  terminate(q, key, job, id, status, ttl_ms)
  release_key(UNIQUE, job, id)
  return 1
end

local out = {}
for a = 6 + NQ, #ARGV, FIELDS do table.insert(out, finish_one(a)) end
return out
