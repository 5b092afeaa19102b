-- ARGV: id, epoch, outcome, stop_reason_json, final_state, artifacts_json,
--       ttl_s, retry_delay_ms
-- outcome: `done`    the run is over (final_state succeeded or failed);
--          `retry`   infrastructure failed: back off and run again, or fail
--                    with stop_reason when the attempts are used up;
--          `release` the worker is shutting down: queue it again, and this
--                    attempt does not count.
-- Returns the run's new state, or nil when the caller no longer holds the
-- lease under this epoch (it must then discard its result).
local id, epoch, outcome = ARGV[1], ARGV[2], ARGV[3]
local reason, final_state, artifacts = ARGV[4], ARGV[5], ARGV[6]
local ttl_s, retry_delay_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
local job = p .. 'job:' .. id
local j = redis.call('HMGET', job, 'epoch', 'state', 'tenant', 'repo', 'attempt', 'max_attempts', 'enq_score')
if j[1] ~= epoch or j[2] ~= 'running' then
  return nil
end
local tenant, repo = j[3], j[4]
local attempt, max_attempts = tonumber(j[5]), tonumber(j[6])
local now = now_ms()
redis.call('ZREM', p .. 'leases', id)

if outcome == 'retry' and attempt >= max_attempts then
  outcome = 'done'
  final_state = 'failed'
end
if outcome == 'done' then
  finalize(id, tenant, 'running', final_state, now, reason, artifacts, ttl_s)
  return final_state
elseif outcome == 'retry' then
  redis.call('HSET', job, 'last_error', reason)
  redis.call('ZADD', p .. 'delayed', now + retry_delay_ms, id)
  transition(id, tenant, 'running', 'delayed')
  return 'delayed'
elseif outcome == 'release' then
  redis.call('HINCRBY', job, 'attempt', -1)
  make_ready(id, tenant, repo, tonumber(j[7]))
  transition(id, tenant, 'running', 'queued')
  return 'queued'
end
return redis.error_reply('ERR unknown outcome ' .. tostring(outcome))
