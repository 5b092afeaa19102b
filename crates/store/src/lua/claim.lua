-- ARGV: worker, lease_ms, n (how many runs the worker has free slots for)
-- Promotes due delayed runs (at most 50), then takes up to n runs, each as
-- a claim of its own would: in the first priority band with work, the head
-- run of the oldest repository of the tenant with the lowest virtual time,
-- advancing that tenant by 1/weight once it has the run (a stale queue entry
-- is dropped without charging the tenant). The worker's liveness is its
-- heartbeat's, not the claim's.
-- Returns {{id, epoch, attempt, max_attempts, spec}, ...}, empty when
-- nothing is dispatchable.
local worker, lease_ms, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3] or '1')
local now = now_ms()

local due = redis.call('ZRANGEBYSCORE', p .. 'delayed', '-inf', now, 'LIMIT', 0, 50)
for _, id in ipairs(due) do
  redis.call('ZREM', p .. 'delayed', id)
  local state, r, seq = read_run(id)
  if state == 'delayed' then
    transition(r, 'delayed', 'queued')
    make_ready(r, seq)
  end
end

-- One run from `band`: {id, epoch, attempt, max_attempts, spec}, or nil.
local function claim_one(band)
  local ready = p .. 'ready:' .. band
  -- Normally one pass; a stale index entry is healed and the next tried.
  for _ = 1, 5 do
    local top = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
    if #top == 0 then
      return nil
    end
    local tenant, vt = top[1], tonumber(top[2])
    local repos = p .. 'repos:' .. band .. ':' .. tenant
    local first = redis.call('ZRANGE', repos, 0, 0)
    if #first == 0 then
      leave_ready(band, tenant)
    else
      local repo = first[1]
      local popped = redis.call('ZPOPMIN', repo_queue(band, tenant, repo))
      -- The repository was indexed, so it was below its cap.
      local more = index_repo(band, tenant, repo, true)
      local id = popped[1]
      local j = id and redis.call('HMGET', p .. 'job:' .. id, 'state', 'max_attempts', 'spec', 'epoch', 'attempt',
        'lane')
      if j and j[1] == 'queued' then
        local r = run_of(id, tenant, repo, band, j[6])
        local caps = limits_of(tenant, repo)
        local w = caps.weight
        if w == nil or w <= 0 then
          w = 1
        end
        if more or redis.call('ZCARD', repos) > 0 then
          redis.call('ZADD', ready, 'XX', vt + 1 / w, tenant)
        else
          leave_ready(band, tenant, vt + 1 / w)
        end
        local epoch, attempt = tonumber(j[4]) + 1, tonumber(j[5]) + 1
        transition(r, 'queued', 'running', {'epoch', epoch, 'attempt', attempt, 'worker', worker, 'started_ms', now})
        defer(p .. 'leases', id, now + lease_ms)
        hold_slot(r, caps)
        return {id, epoch, attempt, tonumber(j[2]), j[3]}
      end
      if not more and redis.call('ZCARD', repos) == 0 then
        leave_ready(band, tenant)
      end
    end
  end
  return nil
end

local claimed = {}
for _, band in ipairs(BANDS) do
  while #claimed < n do
    local run = claim_one(band)
    if not run then
      break
    end
    claimed[#claimed + 1] = run
  end
end
flush()
return claimed
