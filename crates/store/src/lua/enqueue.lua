-- ARGV: k, max_backlog_ms, audit_keep, then k times (one run each, stored
--       as a call of its own would store it, in order): id, tenant, repo,
--       band, spec_json, max_attempts,
--       idem_key (`<caller>:<key>` or empty), fingerprint, idem_ttl_ms,
--       hold ('1': the run waits for approval instead of joining its queue),
--       lane (a follow-up's pull request, `<repo>#<n>`, or empty), ttl_s
--       (for a run a newer one supersedes), mac, event (the run request's
--       audit event, sealed: written with the run, never without it),
--       tenancy (the `tenancy:version` the API decided the run's tenant,
--       scope and policy under, or empty: not checked)
-- Returns per run {'created', id, created_ms, state}, {'existing', id,
-- same_request, ''} when the idempotency key was used before (same_request
-- is 1 when the fingerprints match), {'exists', id, 0, ''} when a run
-- with this id exists already, or {'stale', id, 0, ''} when tenants or
-- policies changed since the API read them (nothing written for it: the
-- API decides again on what is now in force). When the oldest audit
-- event not yet shipped to the bucket is older than max_backlog_ms, nothing
-- is written and every run gets {'backlog', '', age_ms, ''}.
local now = now_ms()
local ARGS = 15
local HEAD = 3
local k = tonumber(ARGV[1])
local backlog = audit_backlog_ms(now)
if backlog > tonumber(ARGV[2]) then
  local out = {}
  for i = 1, k do
    out[i] = {'backlog', '', backlog, ''}
  end
  return out
end
-- A sequence, not the clock, orders a repository's queue: runs enqueued in
-- the same millisecond keep their order. One INCRBY takes the batch's
-- numbers (those of runs not created are skipped: gaps are harmless).
local seq = redis.call('INCRBY', p .. 'seq', k) - k
-- One EXISTS for the batch; run by run only if some id is taken.
local jobs = {}
for i = 1, k do
  jobs[i] = p .. 'job:' .. ARGV[HEAD + 1 + (i - 1) * ARGS]
end
local any_exists = redis.call('EXISTS', unpack(jobs)) > 0

-- Every run is decided first, reading only; then the request events of
-- the runs to be created are written, before anything else is: Redis does
-- not undo a script's earlier writes when a later one fails, so a failure
-- can leave an event whose run was not written, never a run without its
-- event. Ids and idempotency keys taken earlier in the batch count.
local taken, keyed = {}, {}
local tenancy = redis.call('GET', p .. 'tenancy:version') or '0'

local function decide_one(a)
  local id, idem, fingerprint = a[1], a[7], a[8]
  if a[15] ~= '' and a[15] ~= tenancy then
    return {'stale', id, 0, ''}
  end
  if idem ~= '' then
    local seen = keyed[idem] or redis.call('HMGET', p .. 'idem:' .. idem, 'id', 'fingerprint')
    if seen[1] and seen[1] ~= id then
      local same = 0
      if seen[2] == fingerprint then
        same = 1
      end
      return {'existing', seen[1], same, ''}
    end
  end
  if taken[id] or (any_exists and redis.call('EXISTS', p .. 'job:' .. id) == 1) then
    return {'exists', id, 0, ''}
  end
  taken[id] = true
  if idem ~= '' then
    keyed[idem] = {id, fingerprint}
  end
  return nil
end

local function enqueue_one(a)
  local id, tenant, repo, band, spec, max_attempts = a[1], a[2], a[3], a[4], a[5], a[6]
  local idem, fingerprint, idem_ttl = a[7], a[8], tonumber(a[9])
  local hold = a[10] == '1'
  local lane, ttl_s = a[11], tonumber(a[12])
  if idem ~= '' then
    -- Unseen, or reserved for this run by `idem.lua`: now the run's.
    local key = p .. 'idem:' .. idem
    redis.call('HSET', key, 'id', id, 'fingerprint', fingerprint)
    redis.call('HDEL', key, 'pending')
    redis.call('PEXPIRE', key, idem_ttl)
  end
  seq = seq + 1
  local state = 'queued'
  if hold then
    state = 'awaiting_approval'
  end
  redis.call('HSET', p .. 'job:' .. id, 'id', id, 'tenant', tenant, 'repo', repo, 'band', band, 'spec', spec,
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

local out, runs = {}, {}
for i = 1, k do
  local base = HEAD + (i - 1) * ARGS
  runs[i] = {unpack(ARGV, base + 1, base + ARGS)}
  out[i] = decide_one(runs[i])
  if not out[i] then
    audit(runs[i][13], runs[i][14])
  end
end
flush_audit(tonumber(ARGV[3]), now)
for i = 1, k do
  if not out[i] then
    out[i] = enqueue_one(runs[i])
  end
end
flush()
return out
