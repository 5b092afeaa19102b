-- Shared by every queue script (prepended at load time).
-- KEYS[1] is the key prefix `{<namespace>}:`; every key a script touches
-- starts with it, so all of them share one hash slot (Redis Cluster safe).
-- Work per call is bounded: ranges carry LIMIT, loops run over ARGV or a
-- bounded range, and nothing unpacks a whole collection.
local p = KEYS[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function event(id, state)
  redis.call('XADD', p .. 'events', 'MAXLEN', '~', 10000, '*', 'run', id, 'state', state)
end

local function depth(state, tenant, delta)
  redis.call('HINCRBY', p .. 'depth', state, delta)
  redis.call('HINCRBY', p .. 'depth', state .. ':t:' .. tenant, delta)
end

-- Moves a run between states: record, state index, counters, event log.
local function transition(id, tenant, from, to)
  redis.call('HSET', p .. 'job:' .. id, 'state', to)
  redis.call('ZREM', p .. 'idx:state:' .. from, id)
  redis.call('ZADD', p .. 'idx:state:' .. to, 0, id)
  depth(from, tenant, -1)
  depth(to, tenant, 1)
  event(id, to)
end

-- Puts a run into its repository's FIFO queue and makes the repository and
-- tenant dispatchable. A tenant that was idle re-enters at the current
-- minimum virtual time, so it neither starves others nor is starved.
local function make_ready(id, tenant, repo, score)
  local q = p .. 'q:' .. tenant .. ':' .. repo
  redis.call('ZADD', q, score, id)
  local head = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
  redis.call('ZADD', p .. 't:' .. tenant .. ':repos', head[2], repo)
  if redis.call('ZSCORE', p .. 'ready', tenant) == false then
    local vt = tonumber(redis.call('HGET', p .. 'vtime', tenant) or '0')
    local lowest = redis.call('ZRANGE', p .. 'ready', 0, 0, 'WITHSCORES')
    if lowest[2] ~= nil and tonumber(lowest[2]) > vt then
      vt = tonumber(lowest[2])
    end
    redis.call('ZADD', p .. 'ready', vt, tenant)
  end
end

-- Drops up to `n` index entries whose run record has expired.
local function prune_index(key, n)
  local oldest = redis.call('ZRANGE', key, 0, n - 1)
  for _, id in ipairs(oldest) do
    if redis.call('EXISTS', p .. 'job:' .. id) == 0 then
      redis.call('ZREM', key, id)
    end
  end
end

-- Ends a run for good: terminal state, reason, expiry of the live record.
local function finalize(id, tenant, from, to, now, reason, artifacts, ttl_s)
  local job = p .. 'job:' .. id
  redis.call('HSET', job, 'finished_ms', now, 'stop_reason', reason, 'artifacts', artifacts)
  transition(id, tenant, from, to)
  redis.call('EXPIRE', job, ttl_s)
  prune_index(p .. 'idx:state:' .. to, 5)
end
