-- ARGV: k, then k times (one run each, each handed back as a call of its
--       own would be, in order): id, epoch, outcome, stop_reason_json,
--       final_state, artifacts_json, ttl_s, retry_delay_ms, dead_keep_ms, facts_json (may be empty),
--       ledger_key, ledger_json ([[field, n], ...]: what the run used, added
--       to its tenant's cost ledger of the day when it ends), ledger_ttl_s
-- outcome: `done`    the run is over (final_state succeeded, failed or
--                    cancelled);
--          `retry`   infrastructure failed: back off and run again, or fail
--                    (and dead-letter) when the attempts are used up;
--          `release` the worker is shutting down: queue it again, and this
--                    attempt does not count.
-- A run someone cancelled is never retried or released: it ends cancelled.
-- Returns per run its new state, or nil when the caller no longer holds the
-- lease under this epoch (it must then discard its result).
local now = now_ms()

local function finish_one(a)
  local id, epoch, outcome = a[1], a[2], a[3]
  local reason, final_state, artifacts = a[4], a[5], a[6]
  local ttl_s, retry_delay_ms, dead_keep_ms = tonumber(a[7]), tonumber(a[8]), tonumber(a[9])
  local job = p .. 'job:' .. id
  local j = redis.call('HMGET', job, 'epoch', 'state', 'tenant', 'repo', 'attempt', 'max_attempts', 'enq_score',
    'band', 'cancel_by', 'lane')
  local state = j[2]
  if j[1] ~= epoch or (state ~= 'running' and state ~= 'cancelling') then
    return false
  end
  local r = run_of(id, j[3], j[4], j[8], j[10])
  local attempt, max_attempts = tonumber(j[5]), tonumber(j[6])
  defer(p .. 'leases', id)
  free_slot(r)

  if state == 'cancelling' and outcome ~= 'done' then
    outcome, final_state, reason = 'done', 'cancelled', cancelled_reason(j[9] or '')
  end
  if outcome == 'retry' and attempt >= max_attempts then
    outcome, final_state = 'done', 'failed'
    dead_letter(id, now, reason, dead_keep_ms)
  end
  if outcome == 'done' then
    local fields
    if a[10] ~= nil and a[10] ~= '' then
      fields = {'facts', a[10]}
    end
    if a[11] ~= nil and a[11] ~= '' then
      -- A handful of groups (total, repository, requester, one per model).
      for _, entry in ipairs(cjson.decode(a[12])) do
        redis.call('HINCRBY', a[11], entry[1], entry[2])
      end
      redis.call('EXPIRE', a[11], tonumber(a[13]))
    end
    finalize(r, state, final_state, now, reason, artifacts, ttl_s, fields)
    return final_state
  elseif outcome == 'retry' then
    redis.call('ZADD', p .. 'delayed', now + retry_delay_ms, id)
    transition(r, state, 'delayed', {'last_error', reason})
    return 'delayed'
  elseif outcome == 'release' then
    transition(r, state, 'queued', {'attempt', attempt - 1})
    make_ready(r, tonumber(j[7]))
    return 'queued'
  end
end

local ARGS = 13
-- Checked before anything is written: an error half-way through a batch
-- would leave the runs before it moved but their index writes unflushed.
for i = 1, tonumber(ARGV[1]) do
  local outcome = ARGV[1 + (i - 1) * ARGS + 3]
  if outcome ~= 'done' and outcome ~= 'retry' and outcome ~= 'release' then
    return redis.error_reply('ERR unknown outcome ' .. tostring(outcome))
  end
end
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local base = 1 + (i - 1) * ARGS
  out[i] = finish_one({unpack(ARGV, base + 1, base + ARGS)})
end
flush()
return out
