--[[
  emit-3: appends one event to a gateway's reply stream, fenced by ownership,
  and records it in the request's state and output log in the same step, so a
  later attempt resumes exactly after the last event the client can have seen,
  and a client that reconnects (or repeats an idempotent request) can replay
  the events from any point.

  KEYS[1]  request state hash   <p>:gw:{gw}:req:<rid>
  KEYS[2]  request output log   <p>:gw:{gw}:log:<rid>  (stream, entry id <seq+1>-0)
  KEYS[3]  reply stream         <p>:gw:{gw}:events
  ARGV[1]  owner token of the writer
  ARGV[2]  TTL of state and output log, ms (a terminal event sets the retention after the end)
  ARGV[3]  approximate MAXLEN of the reply stream
  ARGV[4]  event type: tokens | done | error
  ARGV[5]  text of a tokens event ('' otherwise)
  ARGV[6]  token count of a tokens event ('0' otherwise)
  ARGV[7]  request id
  ARGV[8..] the event's other field/value pairs (after rid and seq)

  Returns the event's sequence number, or
    -1  fenced: another attempt owns the request now
    -2  the request already ended
]]
local state, log, stream = KEYS[1], KEYS[2], KEYS[3]
local owner = redis.call('HGET', state, 'owner')
if owner ~= ARGV[1] then
  return -1
end
if redis.call('HGET', state, 'done') == '1' then
  return -2
end
local seq = tonumber(redis.call('HGET', state, 'seq') or '0')
redis.call('XADD', stream, 'MAXLEN', '~', ARGV[3], '*', 'rid', ARGV[7], 'seq', seq, unpack(ARGV, 8))
redis.call('XADD', log, (seq + 1) .. '-0', 'rid', ARGV[7], 'seq', seq, unpack(ARGV, 8))
redis.call('HSET', state, 'seq', seq + 1)
if ARGV[4] == 'tokens' then
  redis.call('HINCRBY', state, 'tokens', ARGV[6])
else
  redis.call('HSET', state, 'done', '1')
end
redis.call('PEXPIRE', state, ARGV[2])
redis.call('PEXPIRE', log, ARGV[2])
-- XADD recreates a reply stream that expired (its gateway is gone): never leave it without a TTL.
if redis.call('PTTL', stream) == -1 then
  redis.call('PEXPIRE', stream, ARGV[2])
end
return seq
