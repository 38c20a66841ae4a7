--[[
  handback-1: gives a claimed request back to the queue so another worker
  takes it: the entry is appended again and the old one acked and removed, in
  one step, so the request is never in neither place nor in both.

  KEYS[1]  the model's request stream
  ARGV[1]  consumer group
  ARGV[2]  the entry id being handed back
  ARGV[3..] the entry's field/value pairs

  Returns the new entry id.
]]
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return id
