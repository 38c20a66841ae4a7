--[[
  lease-release-1: gives a lease up, only for its holder.

  KEYS[1]  the lease key
  ARGV[1]  the holder's token

  Returns 1 if released, 0 if held by another.
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
