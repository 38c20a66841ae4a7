--[[
  delete-consumer-if-idle-1: removes a dead worker's consumer from the group,
  but only once it holds no pending entry (deleting a consumer drops its
  pending entries, which would lose requests).

  KEYS[1]  the model's request stream
  ARGV[1]  consumer group
  ARGV[2]  consumer name

  Returns 1 if deleted, 0 if it still holds entries.
]]
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
