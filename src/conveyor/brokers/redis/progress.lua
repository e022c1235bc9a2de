-- Record a running job's progress, fenced. KEYS: job. ARGV[5..]: token, value, note, has_note.
allow_oom()
local job = load_job(KEYS[1])
if not owned(job, ARGV[5]) then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[6], 'updated_at', NOW)
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'note', ARGV[7])
else
  redis.call('HDEL', KEYS[1], 'note')
end
return 1
