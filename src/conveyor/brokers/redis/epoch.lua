-- The epoch marker alone (see heartbeat.lua), read when a lease or an outcome was refused.
-- KEYS: the marker. ARGV[5]: a fresh token, written if the marker is missing.
allow_oom()
return epoch_of(KEYS[1], ARGV[5])
