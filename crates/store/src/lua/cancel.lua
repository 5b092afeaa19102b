-- ARGV: id, by, ttl_s
-- A queued or delayed run ends `cancelled` at once. A running run becomes
-- `cancelling`: its worker learns it from the next heartbeat (and at once
-- from a Pub/Sub nudge on `<prefix>ctl:<worker>`), kills the sandbox and
-- finishes it. Returns {state after the call, state before}, or nil when the
-- run does not exist.
local id, by, ttl_s = ARGV[1], ARGV[2], tonumber(ARGV[3])
local job = p .. 'job:' .. id
local j = redis.call('HMGET', job, 'state', 'tenant', 'repo', 'band', 'worker', 'lane')
local state = j[1]
if not state then
  return nil
end
local r = run_of(id, j[2], j[3], j[4], j[6])
local now = now_ms()
if state == 'queued' then
  unqueue(r)
  finalize(r, state, 'cancelled', now, cancelled_reason(by), '[]', ttl_s, {'cancel_by', by})
  flush()
  return {'cancelled', state}
elseif state == 'delayed' or state == 'awaiting_approval' or state == 'waiting' then
  redis.call('ZREM', p .. 'delayed', id)
  finalize(r, state, 'cancelled', now, cancelled_reason(by), '[]', ttl_s, {'cancel_by', by})
  flush()
  return {'cancelled', state}
elseif state == 'running' then
  transition(r, state, 'cancelling', {'cancel_by', by})
  flush()
  redis.call('PUBLISH', p .. 'ctl:' .. j[5], id)
  return {'cancelling', state}
end
return {state, state}
