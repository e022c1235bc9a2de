-- Resume a paused queue, and wake the fetches blocked on the resume signal (they found a
-- queue paused): the signal stream keeps its last entry only (_keys.py).
-- KEYS: the paused set, the resume signal stream. ARGV[5]: the queue.
local PAUSED, RESUMED = KEYS[1], KEYS[2]
allow_oom()  -- resuming lets workers drain a full Redis
redis.call('SREM', PAUSED, ARGV[5])
redis.call('XADD', RESUMED, 'MAXLEN', 1, '*', 'queue', ARGV[5])
return 1
