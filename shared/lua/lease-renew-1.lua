--[[
  lease-renew-1: extends a lease, only for its holder.

  KEYS[1]  the lease key
  ARGV[1]  the holder's token
  ARGV[2]  TTL, ms

  Returns 1 if extended, 0 if the lease is held by another (or expired).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
