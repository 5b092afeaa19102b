-- ARGV: id, epoch, outcome, stop_reason_json, final_state, artifacts_json,
--       ttl_s, retry_delay_ms, dead_keep_ms, facts_json (may be empty),
--       ledger_key, ledger_json ([[field, n], ...]: what the run used, added
--       to its tenant's cost ledger of the day when it ends), ledger_ttl_s
-- outcome: `done`    the run is over (final_state succeeded, failed or
--                    cancelled);
--          `retry`   infrastructure failed: back off and run again, or fail
--                    (and dead-letter) when the attempts are used up;
--          `release` the worker is shutting down: queue it again, and this
--                    attempt does not count.
-- A run someone cancelled is never retried or released: it ends cancelled.
-- Returns the run's new state, or nil when the caller no longer holds the
-- lease under this epoch (it must then discard its result).
local id, epoch, outcome = ARGV[1], ARGV[2], ARGV[3]
local reason, final_state, artifacts = ARGV[4], ARGV[5], ARGV[6]
local ttl_s, retry_delay_ms, dead_keep_ms = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local job = p .. 'job:' .. id
local j = redis.call('HMGET', job, 'epoch', 'state', 'tenant', 'repo', 'attempt', 'max_attempts', 'enq_score',
  'band', 'cancel_by')
local state = j[2]
if j[1] ~= epoch or (state ~= 'running' and state ~= 'cancelling') then
  return nil
end
local tenant, repo, band = j[3], j[4], j[8]
local attempt, max_attempts = tonumber(j[5]), tonumber(j[6])
local now = now_ms()
redis.call('ZREM', p .. 'leases', id)
free_slot(id, tenant, repo)

if state == 'cancelling' and outcome ~= 'done' then
  outcome, final_state, reason = 'done', 'cancelled', cancelled_reason(j[9] or '')
end
if outcome == 'retry' and attempt >= max_attempts then
  outcome, final_state = 'done', 'failed'
  dead_letter(id, now, reason, dead_keep_ms)
end
if outcome == 'done' then
  if ARGV[10] ~= nil and ARGV[10] ~= '' then
    redis.call('HSET', job, 'facts', ARGV[10])
  end
  if ARGV[11] ~= nil and ARGV[11] ~= '' then
    -- A handful of groups (total, repository, requester, one per model).
    for _, entry in ipairs(cjson.decode(ARGV[12])) do
      redis.call('HINCRBY', ARGV[11], entry[1], entry[2])
    end
    redis.call('EXPIRE', ARGV[11], tonumber(ARGV[13]))
  end
  finalize(id, tenant, repo, state, final_state, now, reason, artifacts, ttl_s)
  return final_state
elseif outcome == 'retry' then
  redis.call('HSET', job, 'last_error', reason)
  redis.call('ZADD', p .. 'delayed', now + retry_delay_ms, id)
  transition(id, tenant, repo, state, 'delayed')
  return 'delayed'
elseif outcome == 'release' then
  redis.call('HINCRBY', job, 'attempt', -1)
  transition(id, tenant, repo, state, 'queued')
  make_ready(id, band, tenant, repo, tonumber(j[7]))
  return 'queued'
end
return redis.error_reply('ERR unknown outcome ' .. tostring(outcome))
