--[[
  dispatch-5: moves staged requests into the model's stream, in fair order,
  until ARGV[2] entries of the stream wait for a worker (or nothing is
  staged). A worker runs it before it claims, and again after a claim that
  took entries, so the stream never runs dry while requests are staged.
  Topping up to a target, instead of adding a count, keeps the stream's
  waiting part short whatever the number of workers: only it is FIFO, and a
  request that arrives later with a higher priority or a less served tenant
  can still go ahead of everything staged.

  Order: priorities strictly (ARGV[3..5] from highest); within a priority the
  backlogged tenant with the lowest virtual time (start tag) first, ties by
  tenant name. Dispatching sets the priority's clock to that start tag and
  advances the tenant's tag by 1 / weight; a tenant whose list empties leaves
  the index and keeps its finish tag for when it comes back (enqueue-4).
  Each job moves from list to stream inside this one script, so it is never
  in neither place nor in both.

  KEYS[1]  the model's request stream      <p>:{model}:requests
  KEYS[2]  the model's fair state hash     <p>:{model}:fair
  KEYS[3..5]  the fair index of each priority, highest first
  ARGV[1]  consumer group
  ARGV[2]  target: waiting entries wanted in the stream
  ARGV[3..5]  the priorities' names, highest first
  ARGV[6..8]  each priority's tenant-list key without the tenant
              (<p>:{model}:q:<priority>:); the lists share the model's hash
              tag, so they live in the same Cluster slot as KEYS

  A staged element that is not a JSON array of field/value strings (written
  by hand or by a buggy producer) must not stop dispatch: it moves into the
  stream as an entry that says so (`malformed` the reason, `raw` the element,
  its first 64 KiB, `raw_bytes` its size when cut, `tenant`, `priority`),
  which no worker can decode, so the worker moves it to the model's
  dead-letter stream like any malformed entry. It counts as moved.

  Returns { moved, still staged }.
]]
local stream, state = KEYS[1], KEYS[2]
local group, target = ARGV[1], tonumber(ARGV[2])

local function fmt(x)
  return string.format('%.17g', x)
end

-- A job has about 20 fields; this bounds what unpack() must handle.
local MAX_ELEMENTS = 1000
local RAW_MAX = 65536

-- A staged element's field/value pairs, or nil and why it is not a list of them.
local function fieldsOf(job)
  local ok, fields = pcall(cjson.decode, job)
  if not ok then
    return nil, 'staged element is not JSON'
  end
  if type(fields) ~= 'table' or #fields == 0 or #fields % 2 ~= 0 then
    return nil, 'staged element is not a JSON array of field/value pairs'
  end
  if #fields > MAX_ELEMENTS then
    return nil, 'staged element has more than ' .. MAX_ELEMENTS .. ' elements'
  end
  for i = 1, #fields do
    if type(fields[i]) ~= 'string' then
      return nil, 'staged element ' .. i .. ' is not a string'
    end
  end
  return fields
end

-- Appends a staged element to the stream: the job, or a mark a worker dead-letters.
local function append(job, tenant, priority)
  local fields, why = fieldsOf(job)
  if fields then
    redis.call('XADD', stream, '*', unpack(fields))
    return
  end
  local mark = { 'malformed', why, 'raw', string.sub(job, 1, RAW_MAX), 'tenant', tenant, 'priority', priority }
  if #job > RAW_MAX then
    mark[#mark + 1] = 'raw_bytes'
    mark[#mark + 1] = tostring(#job)
  end
  redis.call('XADD', stream, '*', unpack(mark))
end

-- Entries of the stream no consumer was given yet, up to `cap`: those after
-- the group's last-delivered id (no group: every entry).
local function undelivered(cap)
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if groups.err then
    return 0 -- no stream yet
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
  return #redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', cap)
end

-- The staged count, checked against the indexes: an empty index means nothing
-- is staged, and a count at zero with tenants indexed is recounted (both only
-- after keys were removed by hand).
local function stagedCount()
  local staged = tonumber(redis.call('HGET', state, 'staged') or '0')
  local indexed = 0
  for i = 3, 5 do
    indexed = indexed + redis.call('ZCARD', KEYS[i])
  end
  if indexed == 0 then
    if staged ~= 0 then
      redis.call('HSET', state, 'staged', 0)
    end
    return 0
  end
  if staged <= 0 then
    staged = 0
    for i = 3, 5 do
      for _, tenant in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
        staged = staged + redis.call('LLEN', ARGV[i + 3] .. tenant)
      end
    end
    redis.call('HSET', state, 'staged', staged)
  end
  return staged
end

-- Moves up to `want` jobs of one priority; returns how many moved.
local function dispatchPriority(index, priority, prefix, want)
  local moved = 0
  local clockField = 'clock:' .. priority
  local clock = tonumber(redis.call('HGET', state, clockField) or '0')
  while moved < want do
    local head = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
    if #head == 0 then
      break
    end
    local tenant, start = head[1], tonumber(head[2])
    local list = prefix .. tenant
    local job = redis.call('LPOP', list)
    if job then
      append(job, tenant, priority)
      moved = moved + 1
      if start > clock then
        clock = start
      end
      local weight = tonumber(redis.call('HGET', state, 'weight:' .. tenant) or '1')
      if not weight or weight <= 0 then
        weight = 1
      end
      local finish = fmt(start + 1 / weight)
      if redis.call('LLEN', list) > 0 then
        redis.call('ZADD', index, finish, tenant)
      else
        redis.call('ZREM', index, tenant)
        redis.call('HSET', state, 'tag:' .. priority .. ':' .. tenant, finish)
      end
    else
      redis.call('ZREM', index, tenant) -- indexed with an empty list: nothing to move
    end
  end
  if moved > 0 then
    redis.call('HSET', state, clockField, fmt(clock))
  end
  return moved
end

local staged = stagedCount()
if staged == 0 then
  return { 0, 0 }
end
local want = math.min(target - undelivered(target), staged)
local moved = 0
for i = 1, 3 do
  if moved >= want then
    break
  end
  moved = moved + dispatchPriority(KEYS[i + 2], ARGV[i + 2], ARGV[i + 5], want - moved)
end
if moved > 0 then
  staged = redis.call('HINCRBY', state, 'staged', -moved)
end
return { moved, staged }
