--[[
  enqueue-4: puts a request in its model's queue, fairly.

  When nothing is staged and no entry of the stream waits for a worker, the
  job is appended to the stream at once, so a worker blocked in XREADGROUP
  wakes with it as before. Otherwise it is staged: appended to its tenant's
  list for its priority, and the tenant joins the priority's fair index if it
  was not backlogged there. Its start tag is max(its last finish tag, the
  priority's virtual clock), so a tenant that was idle banks no credit
  (start-time fair queueing). A worker's dispatch-5 later moves staged jobs
  into the stream in fair order.

  KEYS[1]  the model's request stream          <p>:{model}:requests
  KEYS[2]  the model's fair state hash         <p>:{model}:fair
  KEYS[3]  the fair index of the job priority  <p>:{model}:fair:<priority>
  KEYS[4]  the tenant's list for the priority  <p>:{model}:q:<priority>:<tenant>
  ARGV[1]  consumer group
  ARGV[2]  tenant
  ARGV[3]  priority
  ARGV[4]  the tenant's weight (> 0)
  ARGV[5..] the job's field/value pairs

  Fair state fields: `staged` (jobs in all lists), `clock:<priority>`,
  `tag:<priority>:<tenant>` (finish tag when the tenant last left the index),
  `weight:<tenant>` (the weight its latest request came with).

  Returns the new stream entry id, or false when the job was staged.
]]
local stream, state, index, list = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, tenant, priority, weight = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

-- True when some entry of the stream was delivered to no consumer yet
-- (entries after the group's last-delivered id). No group: every entry waits.
local function someUndelivered()
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if groups.err then
    return false -- no stream yet
  end
  local last = '0-0'
  for _, g in ipairs(groups) do
    local name, id
    for i = 1, #g, 2 do
      if g[i] == 'name' then
        name = g[i + 1]
      elseif g[i] == 'last-delivered-id' then
        id = g[i + 1]
      end
    end
    if name == group then
      last = id
      break
    end
  end
  return #redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1) > 0
end

local staged = tonumber(redis.call('HGET', state, 'staged') or '0')
if staged <= 0 and not someUndelivered() then
  return redis.call('XADD', stream, '*', unpack(ARGV, 5))
end

local fields = {}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
if redis.call('RPUSH', list, cjson.encode(fields)) == 1 then
  local clock = tonumber(redis.call('HGET', state, 'clock:' .. priority) or '0')
  local tag = tonumber(redis.call('HGET', state, 'tag:' .. priority .. ':' .. tenant) or '0')
  redis.call('ZADD', index, string.format('%.17g', math.max(clock, tag)), tenant)
end
redis.call('HSET', state, 'weight:' .. tenant, weight)
redis.call('HINCRBY', state, 'staged', 1)
return false
