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
  ARGV[8]  the sequence number the writer expects this event to get, or ''
           (no check); '!<n>' restores the request at n first (see below)
  ARGV[9..] the event's other field/value pairs (after rid and seq)

  Returns the event's sequence number, or
    -1  fenced: another attempt owns the request now
    -2  the request already ended
    -3  lost: events this attempt wrote are gone (a Redis failover dropped
        writes the old primary had not replicated yet), or the request's
        state is gone altogether; the writer must not go on, because the
        client may have seen what Redis lost

  The expected number makes the script safe to run twice: a client resends
  a command whose reply it lost with the connection, and when the first run
  had been applied the state is past the expected number already, so the
  script returns that number and writes nothing again. Only the owner
  advances `seq`, one event at a time in the order it sends them, so a state
  behind the expected number means lost writes.

  Restore ('!<n>', after -3): the writer takes the request back at n, the
  number after every event it ever sent, and sends its error event there, so
  the gateway ends the request (a number past what it saw is delivered, with
  a gap logged). Refused (-1) when another attempt owns the request.
]]
local state, log, stream = KEYS[1], KEYS[2], KEYS[3]
local expect = ARGV[8]
local owner = redis.call('HGET', state, 'owner')
if string.sub(expect, 1, 1) == '!' and (owner == false or owner == ARGV[1]) then
  redis.call('HSET', state, 'owner', ARGV[1], 'seq', string.sub(expect, 2))
  owner = ARGV[1]
  expect = ''
end
if owner ~= ARGV[1] then
  if owner == false and expect ~= '' then
    return -3
  end
  return -1
end
if redis.call('HGET', state, 'done') == '1' then
  return -2
end
local seq = tonumber(redis.call('HGET', state, 'seq') or '0')
if expect ~= '' then
  local want = tonumber(expect)
  if seq > want then
    return want -- written by an earlier run of this same call
  elseif seq < want then
    return -3
  end
end
redis.call('XADD', stream, 'MAXLEN', '~', ARGV[3], '*', 'rid', ARGV[7], 'seq', seq, unpack(ARGV, 9))
redis.call('XADD', log, (seq + 1) .. '-0', 'rid', ARGV[7], 'seq', seq, unpack(ARGV, 9))
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
