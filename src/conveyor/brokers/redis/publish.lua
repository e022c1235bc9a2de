-- Append events to the event log (Broker.publish), in order, in one step.
-- KEYS: the stream {P}:events and its counter {P}:events:n (common.lua publish computes
-- them; declared so the call goes to their slot). ARGV[5]: the cap; ARGV[6..]: the
-- events, each framed '<length>:<bytes>'.
local framed = {}
for i = 6, #ARGV do framed[#framed + 1] = ARGV[i] end
publish(ARGV[5], framed)
return #framed
