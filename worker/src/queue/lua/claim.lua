-- ARGV: worker, lease_ms
-- Promotes due delayed runs (at most 50), then takes the head run of the
-- least-served tenant's oldest repository queue.
-- Returns {id, epoch, attempt, max_attempts, spec} or nil when nothing is ready.
local worker, lease_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
redis.call('ZADD', p .. 'workers', now, worker)

local due = redis.call('ZRANGEBYSCORE', p .. 'delayed', '-inf', now, 'LIMIT', 0, 50)
for _, id in ipairs(due) do
  redis.call('ZREM', p .. 'delayed', id)
  local j = redis.call('HMGET', p .. 'job:' .. id, 'tenant', 'repo', 'enq_score', 'state')
  if j[4] == 'delayed' then
    make_ready(id, j[1], j[2], tonumber(j[3]))
    transition(id, j[1], 'delayed', 'queued')
  end
end

local top = redis.call('ZRANGE', p .. 'ready', 0, 0, 'WITHSCORES')
if #top == 0 then
  return nil
end
local tenant, vt = top[1], tonumber(top[2]) + 1
local repos = p .. 't:' .. tenant .. ':repos'
local first = redis.call('ZRANGE', repos, 0, 0)
if #first == 0 then
  redis.call('ZREM', p .. 'ready', tenant)
  return nil
end
local repo = first[1]
local q = p .. 'q:' .. tenant .. ':' .. repo
local popped = redis.call('ZPOPMIN', q)
local head = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
if #head == 0 then
  redis.call('ZREM', repos, repo)
else
  redis.call('ZADD', repos, head[2], repo)
end
redis.call('HSET', p .. 'vtime', tenant, vt)
if redis.call('ZCARD', repos) == 0 then
  redis.call('ZREM', p .. 'ready', tenant)
else
  redis.call('ZADD', p .. 'ready', vt, tenant)
end
if #popped == 0 then
  return nil
end

local id = popped[1]
local job = p .. 'job:' .. id
local j = redis.call('HMGET', job, 'state', 'max_attempts', 'spec')
if j[1] ~= 'queued' then
  return nil
end
local epoch = redis.call('HINCRBY', job, 'epoch', 1)
local attempt = redis.call('HINCRBY', job, 'attempt', 1)
redis.call('HSET', job, 'worker', worker, 'started_ms', now)
transition(id, tenant, 'queued', 'running')
redis.call('ZADD', p .. 'leases', now + lease_ms, id)
return {id, epoch, attempt, tonumber(j[2]), j[3]}
