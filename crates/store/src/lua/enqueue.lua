-- ARGV: k, then k times (one run each, stored as a call of its own would
--       store it, in order): id, tenant, repo, band, spec_json, max_attempts,
--       idem_key (`<caller>:<key>` or empty), fingerprint, idem_ttl_ms,
--       hold ('1': the run waits for approval instead of joining its queue),
--       lane (a follow-up's pull request, `<repo>#<n>`, or empty), ttl_s
--       (for a run a newer one supersedes)
-- Returns per run {'created', id, created_ms, state}, {'existing', id,
-- same_request, ''} when the idempotency key was used before (same_request
-- is 1 when the fingerprints match), or {'exists', id, 0, ''} when a run
-- with this id exists already (nothing written).
local now = now_ms()
local ARGS = 12
local k = tonumber(ARGV[1])
-- A sequence, not the clock, orders a repository's queue: runs enqueued in
-- the same millisecond keep their order. One INCRBY takes the batch's
-- numbers (those of runs not created are skipped: gaps are harmless).
local seq = redis.call('INCRBY', p .. 'seq', k) - k
-- One EXISTS for the batch; run by run only if some id is taken.
local jobs = {}
for i = 1, k do
  jobs[i] = p .. 'job:' .. ARGV[2 + (i - 1) * ARGS]
end
local any_exists = redis.call('EXISTS', unpack(jobs)) > 0

local function enqueue_one(a)
  local id, tenant, repo, band, spec, max_attempts = a[1], a[2], a[3], a[4], a[5], a[6]
  local idem, fingerprint, idem_ttl = a[7], a[8], tonumber(a[9])
  local hold = a[10] == '1'
  local lane, ttl_s = a[11], tonumber(a[12])
  if idem ~= '' then
    local key = p .. 'idem:' .. idem
    local seen = redis.call('HMGET', key, 'id', 'fingerprint')
    if seen[1] and seen[1] ~= id then
      local same = 0
      if seen[2] == fingerprint then
        same = 1
      end
      return {'existing', seen[1], same, ''}
    end
    -- Unseen, or reserved for this run by `idem.lua`: now the run's.
    redis.call('HSET', key, 'id', id, 'fingerprint', fingerprint)
    redis.call('HDEL', key, 'pending')
    redis.call('PEXPIRE', key, idem_ttl)
  end
  local job = p .. 'job:' .. id
  if any_exists and redis.call('EXISTS', job) == 1 then
    return {'exists', id, 0, ''}
  end
  seq = seq + 1
  local state = 'queued'
  if hold then
    state = 'awaiting_approval'
  end
  redis.call('HSET', job, 'id', id, 'tenant', tenant, 'repo', repo, 'band', band, 'spec', spec,
    'state', state, 'attempt', 0, 'max_attempts', max_attempts, 'epoch', 0,
    'created_ms', now, 'enq_score', seq, 'lane', lane)
  defer(p .. 'idx:all', id, 0)
  defer(p .. 'idx:state:' .. state, id, 0)
  local r = run_of(id, tenant, repo, band, lane)
  count(r, '', state)
  if not hold then
    state = enter_lane(r, seq, state, now, ttl_s)
  end
  return {'created', id, now, state}
end

local out = {}
for i = 1, k do
  local base = 1 + (i - 1) * ARGS
  out[i] = enqueue_one({unpack(ARGV, base + 1, base + ARGS)})
end
flush()
return out
