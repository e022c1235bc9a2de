-- A waiter's read of a job record, marking the job as waited for (field waited): only a
-- job somebody waits for pushes the completion signal when it ends (common.lua terminate),
-- and the mark is set in the same step as the read, so an end after it signals and an end
-- before it is in the record. KEYS: the job. ARGV[5..]: the record fields, status first.
-- Returns {now, the fields' values}.
allow_oom()
local key = KEYS[1]
local row = redis.call('HMGET', key, unpack(ARGV, 5))
if row[1] and not TERMINAL[row[1]] then redis.call('HSET', key, 'waited', '1') end
return {NOW, row}
