-- ARGV: id, tenant, repo, band, spec_json, max_attempts,
--       idem_key (`<caller>:<key>` or empty), fingerprint, idem_ttl_ms,
--       hold ('1': the run waits for approval instead of joining its queue),
--       lane (a follow-up's pull request, `<repo>#<n>`, or empty), ttl_s
--       (for a run a newer one supersedes)
-- Returns {'created', id, created_ms, state}, or {'existing', id, same_request, ''}
-- when the idempotency key was used before (same_request is 1 when the
-- fingerprints match).
local id, tenant, repo, band, spec, max_attempts = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local idem, fingerprint, idem_ttl = ARGV[7], ARGV[8], tonumber(ARGV[9])
local hold = ARGV[10] == '1'
local lane, ttl_s = ARGV[11], tonumber(ARGV[12])
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
if redis.call('EXISTS', job) == 1 then
  return redis.error_reply('EXISTS run ' .. id .. ' already exists')
end
local now = now_ms()
-- A sequence, not the clock, orders a repository's queue: runs enqueued in
-- the same millisecond keep their order.
local seq = redis.call('INCR', p .. 'seq')
local state = 'queued'
if hold then
  state = 'awaiting_approval'
end
redis.call('HSET', job, 'id', id, 'tenant', tenant, 'repo', repo, 'band', band, 'spec', spec,
  'state', state, 'attempt', 0, 'max_attempts', max_attempts, 'epoch', 0,
  'created_ms', now, 'enq_score', seq, 'lane', lane)
redis.call('ZADD', p .. 'idx:all', 0, id)
redis.call('ZADD', p .. 'idx:state:' .. state, 0, id)
local r = run_of(id, tenant, repo, band, lane)
count(r, state, 1)
if not hold then
  state = enter_lane(r, seq, state, now, ttl_s)
end
return {'created', id, now, state}
