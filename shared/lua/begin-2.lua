--[[
  begin-2: a worker starts (or resumes) a request and becomes its only writer.

  KEYS[1]  request state hash   <p>:gw:{gw}:req:<rid>
  KEYS[2]  request output log   <p>:gw:{gw}:log:<rid>  (stream written by emit)
  ARGV[1]  owner token of this attempt (worker id + nonce)
  ARGV[2]  max attempts
  ARGV[3]  TTL of both keys, ms

  Returns { status, seq, tokens, text, attempts }
    status 'ok'         go on: seq is the next sequence number, tokens and
                        text are what earlier attempts already delivered
    status 'done'       a terminal event was already sent: just ack the entry
    status 'exhausted'  this attempt exceeds max attempts: send an error event
  The token becomes the owner in every case but 'done', so an earlier owner
  (a paused worker that comes back) is fenced off from then on.
]]
local state, log = KEYS[1], KEYS[2]
if redis.call('HGET', state, 'done') == '1' then
  return { 'done', 0, 0, '', 0 }
end
local attempts = redis.call('HINCRBY', state, 'attempts', 1)
redis.call('HSET', state, 'owner', ARGV[1])
redis.call('PEXPIRE', state, ARGV[3])
local seq = tonumber(redis.call('HGET', state, 'seq') or '0')
local tokens = tonumber(redis.call('HGET', state, 'tokens') or '0')
-- The text delivered so far: every tokens event's text, in order (rare: only a
-- continuation after a takeover or hand-back has any).
local parts = {}
for _, entry in ipairs(redis.call('XRANGE', log, '-', '+')) do
  local f = entry[2]
  local typ, text = nil, nil
  for i = 1, #f, 2 do
    if f[i] == 'type' then typ = f[i + 1] elseif f[i] == 'text' then text = f[i + 1] end
  end
  if typ == 'tokens' and text then parts[#parts + 1] = text end
end
local text = table.concat(parts)
if attempts > tonumber(ARGV[2]) then
  return { 'exhausted', seq, tokens, text, attempts }
end
return { 'ok', seq, tokens, text, attempts }
