-- ARGV: id, by, ttl_s
-- A queued or delayed run ends `cancelled` at once. A running run becomes
-- `cancelling`: its worker learns it from the next heartbeat (and at once
-- from a Pub/Sub nudge on `<prefix>ctl:<worker>`), kills the sandbox and
-- finishes it. Returns {state after the call, state before}, or nil when the
-- run does not exist.
local id, by, ttl_s = ARGV[1], ARGV[2], tonumber(ARGV[3])
local job = p .. 'job:' .. id
local j = redis.call('HMGET', job, 'state', 'tenant', 'repo', 'band', 'worker')
local state, tenant, repo, band = j[1], j[2], j[3], j[4]
if not state then
  return nil
end
local now = now_ms()
if state == 'queued' then
  unqueue(id, band, tenant, repo)
  redis.call('HSET', job, 'cancel_by', by)
  finalize(id, tenant, repo, state, 'cancelled', now, cancelled_reason(by), '[]', ttl_s)
  return {'cancelled', state}
elseif state == 'delayed' or state == 'awaiting_approval' or state == 'waiting' then
  redis.call('ZREM', p .. 'delayed', id)
  redis.call('HSET', job, 'cancel_by', by)
  finalize(id, tenant, repo, state, 'cancelled', now, cancelled_reason(by), '[]', ttl_s)
  return {'cancelled', state}
elseif state == 'running' then
  redis.call('HSET', job, 'cancel_by', by)
  transition(id, tenant, repo, state, 'cancelling')
  redis.call('PUBLISH', p .. 'ctl:' .. j[5], id)
  return {'cancelling', state}
end
return {state, state}
