-- ARGV: limit, ttl_s, stop_reason_json for runs whose attempts are used up,
--       dead_keep_ms, max_losses, lost_reason_json for runs whose workers
--       stopped max_losses times (not retried: the run may be the cause)
-- Reclaims up to `limit` runs whose lease expired: bumps the epoch so the
-- old holder is fenced off, frees its cap slots, counts the lost attempt and
-- queues the run again at its original position, fails it (dead letter) when
-- no attempt is left, or ends it cancelled when someone had cancelled it.
-- Also prunes index entries whose run record expired. Returns the
-- reclaimed ids.
local limit, ttl_s, reason, dead_keep_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local max_losses, lost_reason = tonumber(ARGV[5]), ARGV[6]
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  redis.call('ZREM', p .. 'leases', id)
  local job = p .. 'job:' .. id
  local j = redis.call('HMGET', job, 'state', 'tenant', 'repo', 'attempt', 'max_attempts', 'enq_score', 'worker',
    'band', 'cancel_by', 'lane', 'epoch', 'losses')
  local state = j[1]
  if state == 'running' or state == 'cancelling' then
    local r = run_of(id, j[2], j[3], j[8], j[10])
    local losses = (tonumber(j[12]) or 0) + 1
    redis.call('HSET', job, 'epoch', tonumber(j[11]) + 1, 'losses', losses,
      'last_error', 'lease expired: worker ' .. tostring(j[7]) .. ' stopped heartbeating')
    free_slot(r)
    if state == 'cancelling' then
      finalize(r, state, 'cancelled', now, cancelled_reason(j[9] or ''), '[]', ttl_s)
    elseif losses >= max_losses then
      finalize(r, state, 'failed', now, lost_reason, '[]', ttl_s)
      dead_letter(id, now, lost_reason, dead_keep_ms)
    elseif tonumber(j[4]) >= tonumber(j[5]) then
      finalize(r, state, 'failed', now, reason, '[]', ttl_s)
      dead_letter(id, now, reason, dead_keep_ms)
    else
      transition(r, state, 'queued')
      make_ready(r, tonumber(j[6]))
    end
  end
end
-- Index entries of runs whose record expired, oldest first (each call a
-- bounded share: the first live entry ends a pass).
flush()
prune_index(p .. 'idx:all', 200)
for _, state in ipairs({'succeeded', 'failed', 'cancelled'}) do
  prune_index(p .. 'idx:state:' .. state, 200)
end
return expired
