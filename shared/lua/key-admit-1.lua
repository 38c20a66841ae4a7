--[[
  key-admit-1: authenticates an API key and reserves a request's cost against
  the key's rate limits, in one step.

  KEYS[1]  the key's hash   <p>:apikey:<sha256 of the secret>
  ARGV[1]  requests the call costs (1)
  ARGV[2]  tokens the call may use (prompt + max_tokens): reserved now,
           settled by key-settle-1 once the real count is known

  The hash holds the key's record (tenant, rpm, tpm, weight, ...) and, for
  each limit, a token bucket: its capacity is the per-minute limit, it refills
  continuously at limit/60000 per ms, and its state is `<limit>_level` and
  `<limit>_at` (ms, from Redis TIME, so every gateway shares one clock). An
  absent limit is unlimited; a limit of 0 refuses everything. A bucket never
  used is full.

  Returns
    { 'unknown' }                                  no such key (never issued, or revoked)
    { 'too_large', limit, capacity }               the cost exceeds the limit's capacity: it can never pass
    { 'limited', limit, retryAfterMs, capacity }   not enough now; retryAfterMs until every bucket holds
                                                   enough (limit is the bucket that takes longest)
    { 'ok', { field, value, ... } }                reserved from every bucket; the hash as it was (HGETALL)
  Reserves from every bucket or from none, and writes only on 'ok'. A limit
  that is not a number is an error, not "unlimited".
]]
local key = KEYS[1]
local flat = redis.call('HGETALL', key)
if #flat == 0 then
  return { 'unknown' }
end
local rec = {}
for i = 1, #flat, 2 do
  rec[flat[i]] = flat[i + 1]
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local costs = { rpm = tonumber(ARGV[1]), tpm = tonumber(ARGV[2]) }

-- Each limited bucket, refilled to now (the clock never runs backwards here:
-- after a failover to a host whose clock is behind, the bucket just waits).
local buckets = {}
for _, name in ipairs({ 'rpm', 'tpm' }) do
  local raw = rec[name]
  if raw ~= nil and raw ~= '' then
    local cap = tonumber(raw)
    if cap == nil or cap < 0 then
      return redis.error_reply('ERR API key ' .. tostring(rec['id']) .. ' has an invalid ' .. name .. ': ' .. raw)
    end
    local cost = costs[name]
    if cost > cap or cap == 0 then
      return { 'too_large', name, cap }
    end
    local level, at = tonumber(rec[name .. '_level']), tonumber(rec[name .. '_at'])
    if level == nil or at == nil then
      level, at = cap, now
    end
    level = math.min(cap, level + math.max(0, now - at) * cap / 60000)
    at = math.max(at, now)
    buckets[#buckets + 1] = { name = name, cap = cap, cost = cost, level = level, at = at }
  end
end

local wait, slowest = 0, nil
for _, b in ipairs(buckets) do
  if b.cost > b.level then
    -- Rounded up to whole ms; the epsilon keeps float noise (100.00000000001) from adding a ms.
    local ms = math.max(1, math.ceil((b.cost - b.level) * 60000 / b.cap - 1e-6))
    if ms > wait then
      wait, slowest = ms, b
    end
  end
end
if slowest then
  return { 'limited', slowest.name, wait, slowest.cap }
end

for _, b in ipairs(buckets) do
  redis.call('HSET', key, b.name .. '_level', string.format('%.17g', b.level - b.cost), b.name .. '_at', string.format('%.0f', b.at))
end
return { 'ok', flat }
