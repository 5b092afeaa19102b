-- Shared by every queue script (prepended at load time).
-- KEYS[1] is the key prefix `{<namespace>}:`; every key a script touches
-- starts with it, so all of them share one hash slot (Redis Cluster safe).
-- Work per call is bounded: ranges carry LIMIT, loops run over ARGV, the
-- three priority bands or a bounded range, and nothing unpacks a collection.
local p = KEYS[1]
local BANDS = {'high', 'normal', 'low'}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function is_parked(member)
  return redis.call('SISMEMBER', p .. 'parked', member) == 1
end

-- Counters: totals and per tenant in `depth`, per repository in `depth:r`,
-- per priority band and tenant in `depth:b` (`<state>:<band>:<tenant>`, and
-- `dispatchable:<band>:<tenant>` / `dispatchable:<band>:*` as below), a
-- repository's queued runs per band in `depth:rb` (`<band>:<tenant>:<repo>`).
-- `dispatchable` counts queued runs a claim could take now: their repository
-- and tenant are below their caps. `dispatchable:t:<t>` counts a tenant's
-- queued runs in repositories below their cap, whatever the tenant's own cap.
local function count(state, tenant, repo, delta, band)
  redis.call('HINCRBY', p .. 'depth', state, delta)
  if band then
    redis.call('HINCRBY', p .. 'depth:b', state .. ':' .. band .. ':' .. tenant, delta)
    if state == 'queued' then
      redis.call('HINCRBY', p .. 'depth:rb', band .. ':' .. tenant .. ':' .. repo, delta)
    end
  end
  redis.call('HINCRBY', p .. 'depth', state .. ':t:' .. tenant, delta)
  redis.call('HINCRBY', p .. 'depth:r', state .. ':' .. tenant .. ':' .. repo, delta)
  if state == 'queued' and not is_parked('r:' .. tenant .. ':' .. repo) then
    redis.call('HINCRBY', p .. 'depth', 'dispatchable:t:' .. tenant, delta)
    if band then
      redis.call('HINCRBY', p .. 'depth:b', 'dispatchable:' .. band .. ':' .. tenant, delta)
    end
    if not is_parked('t:' .. tenant) then
      redis.call('HINCRBY', p .. 'depth', 'dispatchable', delta)
      if band then
        redis.call('HINCRBY', p .. 'depth:b', 'dispatchable:' .. band .. ':*', delta)
      end
    end
  end
end

-- Moves a run between states: record, state index, counters. (The audit
-- trail, not Redis, is the history of a run's states.)
local function transition(id, tenant, repo, from, to)
  redis.call('HSET', p .. 'job:' .. id, 'state', to)
  redis.call('ZREM', p .. 'idx:state:' .. from, id)
  redis.call('ZADD', p .. 'idx:state:' .. to, 0, id)
  -- Only runs enqueued since bands were counted (`bc`) move band counts:
  -- one accepted before would take from a count it never added to.
  local job = redis.call('HMGET', p .. 'job:' .. id, 'band', 'bc')
  local band = job[2] and job[1] or nil
  count(from, tenant, repo, -1, band)
  count(to, tenant, repo, 1, band)
end

local function repo_queue(band, tenant, repo)
  return p .. 'q:' .. band .. ':' .. tenant .. ':' .. repo
end

-- Indexes a repository under its head score in `repos:<band>:<tenant>`, or
-- drops it when its queue in that band is empty or it is at its cap.
local function index_repo(band, tenant, repo)
  local repos = p .. 'repos:' .. band .. ':' .. tenant
  local head = redis.call('ZRANGE', repo_queue(band, tenant, repo), 0, 0, 'WITHSCORES')
  if #head == 0 or is_parked('r:' .. tenant .. ':' .. repo) then
    redis.call('ZREM', repos, repo)
  else
    redis.call('ZADD', repos, head[2], repo)
  end
end

-- Puts a tenant in `ready:<band>` when it has dispatchable repositories and
-- is below its cap, or takes it out. A tenant that was away re-enters at the
-- band's lowest virtual time: it neither starves others nor is starved.
local function index_tenant(band, tenant)
  local ready = p .. 'ready:' .. band
  if is_parked('t:' .. tenant) or redis.call('ZCARD', p .. 'repos:' .. band .. ':' .. tenant) == 0 then
    redis.call('ZREM', ready, tenant)
    return
  end
  if redis.call('ZSCORE', ready, tenant) then
    return
  end
  local vt = tonumber(redis.call('HGET', p .. 'vtime', band .. ':' .. tenant) or '0')
  local lowest = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if lowest[2] ~= nil and tonumber(lowest[2]) > vt then
    vt = tonumber(lowest[2])
  end
  redis.call('ZADD', ready, vt, tenant)
end

local function make_ready(id, band, tenant, repo, score)
  redis.call('ZADD', repo_queue(band, tenant, repo), score, id)
  index_repo(band, tenant, repo)
  index_tenant(band, tenant)
end

local function unqueue(id, band, tenant, repo)
  redis.call('ZREM', repo_queue(band, tenant, repo), id)
  index_repo(band, tenant, repo)
  index_tenant(band, tenant)
end

local function limit(field)
  local v = redis.call('HGET', p .. 'limits', field)
  if v then
    return tonumber(v)
  end
  return nil
end

-- Caps: a repository or tenant at its cap leaves the ready indexes (is
-- parked) and comes back when a slot frees, so claims never scan blocked work.
local function park_repo(tenant, repo, parked)
  local member = 'r:' .. tenant .. ':' .. repo
  local changed
  if parked then
    changed = redis.call('SADD', p .. 'parked', member)
  else
    changed = redis.call('SREM', p .. 'parked', member)
  end
  if changed == 0 then
    return
  end
  for _, band in ipairs(BANDS) do
    index_repo(band, tenant, repo)
    index_tenant(band, tenant)
  end
  local n = tonumber(redis.call('HGET', p .. 'depth:r', 'queued:' .. tenant .. ':' .. repo) or '0')
  if parked then
    n = 0 - n  -- not -n: Redis refuses "-0" as an integer
  end
  redis.call('HINCRBY', p .. 'depth', 'dispatchable:t:' .. tenant, n)
  local tenant_open = not is_parked('t:' .. tenant)
  if tenant_open then
    redis.call('HINCRBY', p .. 'depth', 'dispatchable', n)
  end
  for _, band in ipairs(BANDS) do
    local b = tonumber(redis.call('HGET', p .. 'depth:rb', band .. ':' .. tenant .. ':' .. repo) or '0')
    if b ~= 0 then
      if parked then
        b = 0 - b
      end
      redis.call('HINCRBY', p .. 'depth:b', 'dispatchable:' .. band .. ':' .. tenant, b)
      if tenant_open then
        redis.call('HINCRBY', p .. 'depth:b', 'dispatchable:' .. band .. ':*', b)
      end
    end
  end
end

local function park_tenant(tenant, parked)
  local changed
  if parked then
    changed = redis.call('SADD', p .. 'parked', 't:' .. tenant)
  else
    changed = redis.call('SREM', p .. 'parked', 't:' .. tenant)
  end
  if changed == 0 then
    return
  end
  for _, band in ipairs(BANDS) do
    index_tenant(band, tenant)
  end
  local n = tonumber(redis.call('HGET', p .. 'depth', 'dispatchable:t:' .. tenant) or '0')
  if parked then
    n = 0 - n  -- not -n: Redis refuses "-0" as an integer
  end
  redis.call('HINCRBY', p .. 'depth', 'dispatchable', n)
  for _, band in ipairs(BANDS) do
    local b = tonumber(redis.call('HGET', p .. 'depth:b', 'dispatchable:' .. band .. ':' .. tenant) or '0')
    if b ~= 0 then
      if parked then
        b = 0 - b
      end
      redis.call('HINCRBY', p .. 'depth:b', 'dispatchable:' .. band .. ':*', b)
    end
  end
end

-- Parks or un-parks a repository and its tenant to match their caps and
-- the runs they hold now (sets of run ids, so a reaper can heal them).
local function enforce_caps(tenant, repo)
  local rcap = limit('repo:' .. tenant .. ':' .. repo)
  local held = redis.call('SCARD', p .. 'running:repo:' .. tenant .. ':' .. repo)
  park_repo(tenant, repo, rcap ~= nil and held >= rcap)
  local tcap = limit('tenant:' .. tenant)
  held = redis.call('SCARD', p .. 'running:tenant:' .. tenant)
  park_tenant(tenant, tcap ~= nil and held >= tcap)
end

local function hold_slot(id, tenant, repo)
  redis.call('SADD', p .. 'running:repo:' .. tenant .. ':' .. repo, id)
  redis.call('SADD', p .. 'running:tenant:' .. tenant, id)
  enforce_caps(tenant, repo)
end

local function free_slot(id, tenant, repo)
  redis.call('SREM', p .. 'running:repo:' .. tenant .. ':' .. repo, id)
  redis.call('SREM', p .. 'running:tenant:' .. tenant, id)
  enforce_caps(tenant, repo)
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

-- Pull-request lanes: the runs of one pull request never run at once.
-- `lane:<repo>#<n>` names the run that owns the lane (queued, running, or
-- between attempts); `lane:<repo>#<n>:next` the one waiting behind it.
local function lane_key(lane)
  return p .. 'lane:' .. lane
end

local function superseded_reason(by)
  return cjson.encode({kind = 'superseded', by = by})
end

local finalize

-- A run of the lane that has not started gives way to a newer trigger.
local function supersede(id, by, now, ttl_s)
  local j = redis.call('HMGET', p .. 'job:' .. id, 'state', 'tenant', 'repo', 'band')
  local state = j[1]
  if state ~= 'queued' and state ~= 'waiting' then
    return
  end
  if state == 'queued' then
    unqueue(id, j[4], j[2], j[3])
  end
  finalize(id, j[2], j[3], state, 'cancelled', now, superseded_reason(by), '[]', ttl_s)
end

-- Run `id` (state `from`) joins its lane: it owns the lane and is queued
-- when the lane is free or its owner has not started (the owner is then
-- superseded), else it waits behind the running owner, replacing any run
-- already waiting. Without a lane it is queued. Returns its state.
local function enter_lane(id, band, tenant, repo, seq, lane, from, now, ttl_s)
  local function queue()
    if from ~= 'queued' then
      transition(id, tenant, repo, from, 'queued')
    end
  end
  if lane == nil or lane == '' then
    queue()
    make_ready(id, band, tenant, repo, seq)
    return 'queued'
  end
  local key = lane_key(lane)
  local waiting = redis.call('GET', key .. ':next')
  if waiting then
    redis.call('DEL', key .. ':next')
    supersede(waiting, id, now, ttl_s)
  end
  local owner = redis.call('GET', key)
  local owner_state = owner and redis.call('HGET', p .. 'job:' .. owner, 'state')
  if owner_state == 'queued' then
    redis.call('DEL', key)
    supersede(owner, id, now, ttl_s)
    owner_state = nil
  end
  if owner_state == 'running' or owner_state == 'cancelling' or owner_state == 'delayed' then
    redis.call('SET', key .. ':next', id)
    transition(id, tenant, repo, from, 'waiting')
    return 'waiting'
  end
  redis.call('SET', key, id)
  queue()
  make_ready(id, band, tenant, repo, seq)
  return 'queued'
end

-- A run that ended hands its lane to the run waiting behind it.
local function leave_lane(id)
  local lane = redis.call('HGET', p .. 'job:' .. id, 'lane')
  if not lane or lane == '' then
    return
  end
  local key = lane_key(lane)
  if redis.call('GET', key .. ':next') == id then
    redis.call('DEL', key .. ':next')
    return
  end
  if redis.call('GET', key) ~= id then
    return
  end
  local nxt = redis.call('GET', key .. ':next')
  redis.call('DEL', key .. ':next')
  local j = nxt and redis.call('HMGET', p .. 'job:' .. nxt, 'state', 'tenant', 'repo', 'band', 'enq_score')
  if j and j[1] == 'waiting' then
    redis.call('SET', key, nxt)
    transition(nxt, j[2], j[3], 'waiting', 'queued')
    make_ready(nxt, j[4], j[2], j[3], tonumber(j[5]))
  else
    redis.call('DEL', key)
  end
end

-- Ends a run for good: terminal state, reason, expiry of the live record.
finalize = function(id, tenant, repo, from, to, now, reason, artifacts, ttl_s)
  local job = p .. 'job:' .. id
  redis.call('HSET', job, 'finished_ms', now, 'stop_reason', reason, 'artifacts', artifacts)
  transition(id, tenant, repo, from, to)
  leave_lane(id)
  redis.call('EXPIRE', job, ttl_s)
  prune_index(p .. 'idx:state:' .. to, 5)
end

-- Records a run that failed for infrastructure reasons after its last
-- attempt in the dead-letter set (with its reason), and trims entries older
-- than `keep_ms`, a bounded number per call.
local function dead_letter(id, now, reason, keep_ms)
  redis.call('ZADD', p .. 'dead', now, id)
  redis.call('HSET', p .. 'dead:reason', id, reason)
  local old = redis.call('ZRANGEBYSCORE', p .. 'dead', '-inf', now - keep_ms, 'LIMIT', 0, 20)
  for _, old_id in ipairs(old) do
    redis.call('ZREM', p .. 'dead', old_id)
    redis.call('HDEL', p .. 'dead:reason', old_id)
  end
end

local function cancelled_reason(by)
  return cjson.encode({kind = 'cancelled', by = by})
end
