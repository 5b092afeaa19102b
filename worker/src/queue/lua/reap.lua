-- ARGV: limit, ttl_s, stop_reason_json for runs whose attempts are used up
-- Reclaims up to `limit` runs whose lease expired: bumps the epoch so the
-- old holder is fenced off, counts the lost attempt, and queues the run again
-- at its original position (or fails it when no attempt is left).
-- Returns the reclaimed ids.
local limit, ttl_s, reason = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  redis.call('ZREM', p .. 'leases', id)
  local job = p .. 'job:' .. id
  local j = redis.call('HMGET', job, 'state', 'tenant', 'repo', 'attempt', 'max_attempts', 'enq_score', 'worker')
  if j[1] == 'running' then
    redis.call('HINCRBY', job, 'epoch', 1)
    redis.call('HSET', job, 'last_error', 'lease expired: worker ' .. tostring(j[7]) .. ' stopped heartbeating')
    if tonumber(j[4]) >= tonumber(j[5]) then
      finalize(id, j[2], 'running', 'failed', now, reason, '[]', ttl_s)
    else
      make_ready(id, j[2], j[3], tonumber(j[6]))
      transition(id, j[2], 'running', 'queued')
    end
  end
end
return expired
