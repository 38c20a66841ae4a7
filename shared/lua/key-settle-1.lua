--[[
  key-settle-1: settles a key-admit-1 reservation once the tokens the request
  really used are known.

  KEYS[1]  the key's hash   <p>:apikey:<sha256 of the secret>
  ARGV[1]  tokens to give back: reserved - used (negative when the request
           used more than it reserved: the difference is charged)

  Refills the tpm bucket to now (Redis TIME), adds ARGV[1], and caps the level
  at the capacity. A charge may take the level below 0, so the key's next
  requests wait until the bucket refills. A revoked key (no hash) or a key
  without a tpm limit is left alone: nothing is created.

  Returns 1 if the bucket changed, 0 if not.
]]
local vals = redis.call('HMGET', KEYS[1], 'tpm', 'tpm_level', 'tpm_at')
local cap = tonumber(vals[1])
if cap == nil or cap <= 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local level, at = tonumber(vals[2]), tonumber(vals[3])
if level == nil or at == nil then
  level, at = cap, now
end
level = math.min(cap, level + math.max(0, now - at) * cap / 60000)
at = math.max(at, now)
level = math.min(cap, level + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'tpm_level', string.format('%.17g', level), 'tpm_at', string.format('%.0f', at))
return 1
