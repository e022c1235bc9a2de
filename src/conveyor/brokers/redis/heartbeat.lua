-- Announce a live worker, and read the epoch marker (_keys.py): the client compares it with
-- the one it saw last, which tells it that Redis lost its data in between.
-- KEYS: the worker's key, the workers set, the epoch marker, then for each queue of the
-- worker its ten priority streams and its scheduled set. ARGV[5..]: worker id, its info
-- (JSON), announcement ttl (ms), record ttl (ms), a fresh epoch token (written if the
-- marker is missing).
-- Returns {epoch marker, jobs the queues hold}: stream entries (queued or leased) and
-- scheduled jobs, each an O(1) count.
allow_oom()  -- a worker draining a full Redis still announces itself
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', NOW)
redis.call('SET', KEYS[1], ARGV[6], 'PX', ARGV[8])
redis.call('ZADD', KEYS[2], NOW + tonumber(ARGV[7]), ARGV[5])
local jobs = 0
for i = 4, #KEYS, 11 do
  for p = 0, 9 do jobs = jobs + redis.call('XLEN', KEYS[i + p]) end
  jobs = jobs + redis.call('ZCARD', KEYS[i + 10])
end
return {epoch_of(KEYS[3], ARGV[9]), jobs}
