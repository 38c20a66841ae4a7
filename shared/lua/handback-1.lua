--[[
  handback-1: gives a claimed request back to the queue so another worker
  takes it: the entry is appended again and the old one acked and removed, in
  one step, so the request is never in neither place nor in both. Only the
  consumer that holds the entry may hand it back: one that was fenced without
  knowing it (its entry taken over) changes nothing.

  KEYS[1]  the model's request stream
  ARGV[1]  consumer group
  ARGV[2]  the entry id being handed back
  ARGV[3]  the consumer handing it back
  ARGV[4..] the entry's field/value pairs

  Returns the new entry id, or false if the entry is not held by ARGV[3].
]]
local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #held == 0 or held[1][2] ~= ARGV[3] then
  return false
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return id
