-- ARGV: worker, lease_ms
-- Promotes due delayed runs (at most 50), then, in the first priority band
-- with work, takes the head run of the oldest repository of the tenant with
-- the lowest virtual time, and advances that tenant by 1/weight once it has
-- the run (a stale queue entry is dropped without charging the tenant).
-- Returns {id, epoch, attempt, max_attempts, spec} or nil when nothing is
-- dispatchable.
local worker, lease_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
redis.call('ZADD', p .. 'workers', now, worker)

local due = redis.call('ZRANGEBYSCORE', p .. 'delayed', '-inf', now, 'LIMIT', 0, 50)
for _, id in ipairs(due) do
  redis.call('ZREM', p .. 'delayed', id)
  local j = redis.call('HMGET', p .. 'job:' .. id, 'tenant', 'repo', 'band', 'enq_score', 'state')
  if j[5] == 'delayed' then
    transition(id, j[1], j[2], 'delayed', 'queued')
    make_ready(id, j[3], j[1], j[2], tonumber(j[4]))
  end
end

for _, band in ipairs(BANDS) do
  local ready = p .. 'ready:' .. band
  -- Normally one pass; a stale index entry is healed and the next tried.
  for _ = 1, 5 do
    local top = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
    if #top == 0 then
      break
    end
    local tenant, vt = top[1], tonumber(top[2])
    local first = redis.call('ZRANGE', p .. 'repos:' .. band .. ':' .. tenant, 0, 0)
    if #first == 0 then
      redis.call('ZREM', ready, tenant)
    else
      local repo = first[1]
      local popped = redis.call('ZPOPMIN', repo_queue(band, tenant, repo))
      index_repo(band, tenant, repo)
      local id = popped[1]
      local job = p .. 'job:' .. (id or '')
      local j = id and redis.call('HMGET', job, 'state', 'max_attempts', 'spec')
      if j and j[1] == 'queued' then
        local w = tonumber(redis.call('HGET', p .. 'limits', 'weight:' .. tenant) or '1')
        if w == nil or w <= 0 then
          w = 1
        end
        vt = vt + 1 / w
        redis.call('HSET', p .. 'vtime', band .. ':' .. tenant, vt)
        if redis.call('ZSCORE', ready, tenant) then
          redis.call('ZADD', ready, 'XX', vt, tenant)
        end
        index_tenant(band, tenant)
        local epoch = redis.call('HINCRBY', job, 'epoch', 1)
        local attempt = redis.call('HINCRBY', job, 'attempt', 1)
        redis.call('HSET', job, 'worker', worker, 'started_ms', now)
        transition(id, tenant, repo, 'queued', 'running')
        redis.call('ZADD', p .. 'leases', now + lease_ms, id)
        hold_slot(id, tenant, repo)
        return {id, epoch, attempt, tonumber(j[2]), j[3]}
      end
      index_tenant(band, tenant)
    end
  end
end
return nil
