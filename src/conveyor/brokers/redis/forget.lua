-- Delete one consumer (a stopped worker's name) from the groups of the given streams where
-- it holds no pending entry; where it still holds some it stays, so nothing leaves the
-- pending list. KEYS: streams. ARGV[5]: consumer. Returns how many groups it left.
local n = 0
for i = 1, #KEYS do n = n + drop_idle_consumers(KEYS[i], ARGV[5], 0) end
return n
