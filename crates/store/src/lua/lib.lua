-- Shared by every queue script (prepended at load time).
-- KEYS[1] is the key prefix `{<namespace>}:`; every key a script touches
-- starts with it, so all of them share one hash slot (Redis Cluster safe).
-- Work per call is bounded: ranges carry LIMIT, loops run over ARGV, the
-- three priority bands or a bounded range, and nothing unpacks a collection;
-- the one exception is setting a cap (`recount_held`), which reads every
-- lease once.
-- Every Redis command a run's path costs is counted by the scheduling
-- benchmark: what can be computed when read (totals, per tenant,
-- dispatchable) is not maintained here.
local p = KEYS[1]
local BANDS = {'high', 'normal', 'low'}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A run as the scripts pass it around: the fields that key its counters,
-- queues and lane, read once from its record.
local function run_of(id, tenant, repo, band, lane)
  return {id = id, job = p .. 'job:' .. id, tenant = tenant, repo = repo, band = band, lane = lane}
end

-- Index writes (`idx:*`, `leases`) of a call, applied once at its end by
-- `flush`, which every script that moves runs calls before it returns: a
-- sorted set takes all of the call's members in one ZADD and one ZREM,
-- however many runs moved; a member's last write wins, as if each had been
-- applied in turn. Nothing reads these keys while a script runs.
local deferred, deferred_keys = {}, {}

local function defer(key, member, score)
  local writes = deferred[key]
  if not writes then
    writes = {}
    deferred[key] = writes
    deferred_keys[#deferred_keys + 1] = key
  end
  writes[member] = score or false
end

local function flush()
  for _, key in ipairs(deferred_keys) do
    local adds, removes = {}, {}
    for member, score in pairs(deferred[key]) do
      if score then
        adds[#adds + 1] = score
        adds[#adds + 1] = member
      else
        removes[#removes + 1] = member
      end
    end
    for i = 1, #adds, 1000 do
      redis.call('ZADD', key, unpack(adds, i, math.min(i + 999, #adds)))
    end
    for i = 1, #removes, 500 do
      redis.call('ZREM', key, unpack(removes, i, math.min(i + 499, #removes)))
    end
  end
  deferred, deferred_keys = {}, {}
end

-- The pending audit log. An event the API sealed (`mac`, `json`: an HMAC
-- under a key Redis never holds) is numbered by `audit:seq` and appended to
-- `audit:pending` as `<seq> <ms> <mac> <json>` by the same call that makes
-- the change it records, so neither exists without the other; its JSON
-- joins the queryable index `audit:events` (the newest `keep`). A shipper
-- moves pending events into the signed trail in the bucket and trims them
-- once the bucket has them (`ship.lua`). One INCRBY, RPUSH and LTRIM per
-- call, however many events; `flush_audit` writes them.
local audit_lines = {}

local function audit(mac, json)
  audit_lines[#audit_lines + 1] = {mac, json}
end

-- `indexed`: how many of the call's events (the first ones) join the index
-- (nil: all of them); the pending log takes every one.
local function flush_audit(keep, now, indexed)
  local n = #audit_lines
  if n == 0 then
    return
  end
  indexed = indexed or n
  local seq = redis.call('INCRBY', p .. 'audit:seq', n) - n
  local pending, index = {}, {}
  for i, e in ipairs(audit_lines) do
    pending[i] = (seq + i) .. ' ' .. now .. ' ' .. e[1] .. ' ' .. e[2]
    if i <= indexed then
      index[i] = e[2]
    end
  end
  for i = 1, n, 1000 do
    redis.call('RPUSH', p .. 'audit:pending', unpack(pending, i, math.min(i + 999, n)))
  end
  for i = 1, #index, 1000 do
    redis.call('RPUSH', p .. 'audit:events', unpack(index, i, math.min(i + 999, #index)))
  end
  if #index > 0 then
    redis.call('LTRIM', p .. 'audit:events', -keep, -1)
  end
  audit_lines = {}
end

-- How long (ms) the oldest event not yet shipped has waited; 0 with none.
local function audit_backlog_ms(now)
  local oldest = redis.call('LINDEX', p .. 'audit:pending', 0)
  if not oldest then
    return 0
  end
  return now - (tonumber(string.match(oldest, '^%d+ (%d+) ')) or 0)
end

-- The one counter: transitions by `<from>><to>:<band>:<tenant>:<repo>` in
-- `count` (`from` empty for a new run), one HINCRBY per move. The runs in a
-- state are the moves into it less the moves out of it; totals, per tenant,
-- per band, per repository and `dispatchable` (queued in a repository and
-- tenant below their caps, from `parked`) are sums of those, computed by the
-- reader (`RunQueue::depth`).
local function count(r, from, to)
  redis.call('HINCRBY', p .. 'count', from .. '>' .. to .. ':' .. r.band .. ':' .. r.tenant .. ':' .. r.repo, 1)
end

-- Moves a run between states: record (with `fields`, more field/value
-- pairs written in the same HSET), state index, counter. (The audit trail,
-- not Redis, is the history of a run's states.)
local function transition(r, from, to, fields)
  if fields then
    redis.call('HSET', r.job, 'state', to, unpack(fields))
  else
    redis.call('HSET', r.job, 'state', to)
  end
  defer(p .. 'idx:state:' .. from, r.id)
  defer(p .. 'idx:state:' .. to, r.id, 0)
  count(r, from, to)
end

local function repo_queue(band, tenant, repo)
  return p .. 'q:' .. band .. ':' .. tenant .. ':' .. repo
end

local function repo_member(tenant, repo)
  return 'r:' .. tenant .. ':' .. repo
end

-- Whether anything is at its cap, read once per call: usually nothing is,
-- and then no member needs looking up.
local parked_none

local function none_parked()
  if parked_none == nil then
    parked_none = redis.call('SCARD', p .. 'parked') == 0
  end
  return parked_none
end

local function is_parked(member)
  return not none_parked() and redis.call('SISMEMBER', p .. 'parked', member) == 1
end

-- Indexes a repository under its head score in `repos:<band>:<tenant>`, or
-- drops it when its queue in that band is empty or it is at its cap
-- (`open`: known to be below it). Returns whether it is indexed.
local function index_repo(band, tenant, repo, open)
  local repos = p .. 'repos:' .. band .. ':' .. tenant
  local head = redis.call('ZRANGE', repo_queue(band, tenant, repo), 0, 0, 'WITHSCORES')
  if #head == 0 or (not open and is_parked(repo_member(tenant, repo))) then
    redis.call('ZREM', repos, repo)
    return false
  end
  redis.call('ZADD', repos, head[2], repo)
  return true
end

-- Tenants this call knows are in a ready index (`<band>:<tenant>`).
local in_ready = {}

-- Puts a tenant in `ready:<band>` at the band's lowest virtual time, if it
-- is not there: a tenant that was away neither starves others nor is
-- starved. A tenant entering means a claim that found nothing could find
-- work now, so idle workers are woken.
local function enter_ready(band, tenant)
  local ready = p .. 'ready:' .. band
  local known = band .. ':' .. tenant
  if in_ready[known] then
    return
  end
  in_ready[known] = true
  if redis.call('ZSCORE', ready, tenant) then
    return
  end
  local vt = tonumber(redis.call('HGET', p .. 'vtime', band .. ':' .. tenant) or '0')
  local lowest = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  if lowest[2] ~= nil and tonumber(lowest[2]) > vt then
    vt = tonumber(lowest[2])
  end
  redis.call('ZADD', ready, vt, tenant)
  redis.call('PUBLISH', p .. 'wake', band)
end

-- Takes a tenant out of `ready:<band>`, keeping its virtual time.
local function leave_ready(band, tenant, vt)
  local ready = p .. 'ready:' .. band
  in_ready[band .. ':' .. tenant] = nil
  vt = vt or redis.call('ZSCORE', ready, tenant)
  if vt then
    redis.call('HSET', p .. 'vtime', band .. ':' .. tenant, vt)
    redis.call('ZREM', ready, tenant)
  end
end

-- Puts a tenant in `ready:<band>` when it has dispatchable repositories and
-- is below its cap, or takes it out.
local function index_tenant(band, tenant)
  if is_parked('t:' .. tenant) or redis.call('ZCARD', p .. 'repos:' .. band .. ':' .. tenant) == 0 then
    leave_ready(band, tenant)
  else
    enter_ready(band, tenant)
  end
end

-- Queues run `r` at `score` (its sequence) and indexes its repository and
-- tenant: the repository's head can only move earlier (`LT`), and both
-- caps are read in one command.
local function make_ready(r, score)
  redis.call('ZADD', repo_queue(r.band, r.tenant, r.repo), score, r.id)
  local parked = {0, 0}
  if not none_parked() then
    parked = redis.call('SMISMEMBER', p .. 'parked', repo_member(r.tenant, r.repo), 't:' .. r.tenant)
  end
  if parked[1] == 1 then
    return
  end
  redis.call('ZADD', p .. 'repos:' .. r.band .. ':' .. r.tenant, 'LT', score, r.repo)
  if parked[2] == 0 then
    enter_ready(r.band, r.tenant)
  end
end

local function unqueue(r)
  redis.call('ZREM', repo_queue(r.band, r.tenant, r.repo), r.id)
  index_repo(r.band, r.tenant, r.repo)
  index_tenant(r.band, r.tenant)
end

-- Caps and weight of a tenant and repository, in one read, once per call;
-- nothing read when no cap or weight is set anywhere.
local limits_none, limits_seen = nil, {}

local function limits_of(tenant, repo)
  if limits_none == nil then
    limits_none = redis.call('HLEN', p .. 'limits') == 0
  end
  if limits_none then
    return {}
  end
  local known = tenant .. ':' .. repo
  if not limits_seen[known] then
    local l = redis.call('HMGET', p .. 'limits', 'repo:' .. known, 'tenant:' .. tenant, 'weight:' .. tenant)
    limits_seen[known] = {repo = tonumber(l[1]), tenant = tonumber(l[2]), weight = tonumber(l[3])}
  end
  return limits_seen[known]
end

-- Caps: a repository or tenant at its cap leaves the ready indexes (is
-- parked) and comes back when a slot frees, so claims never scan blocked work.
local function park_repo(tenant, repo, parked)
  local changed
  if parked then
    changed = redis.call('SADD', p .. 'parked', repo_member(tenant, repo))
    parked_none = false
  else
    changed = redis.call('SREM', p .. 'parked', repo_member(tenant, repo))
  end
  if changed == 0 then
    return
  end
  for _, band in ipairs(BANDS) do
    index_repo(band, tenant, repo)
    index_tenant(band, tenant)
  end
end

local function park_tenant(tenant, parked)
  local changed
  if parked then
    changed = redis.call('SADD', p .. 'parked', 't:' .. tenant)
    parked_none = false
  else
    changed = redis.call('SREM', p .. 'parked', 't:' .. tenant)
  end
  if changed == 0 then
    return
  end
  for _, band in ipairs(BANDS) do
    index_tenant(band, tenant)
  end
end

-- Slots: `held` counts the runs (running or cancelling) a capped tenant
-- (`t:<tenant>`) or capped repository (`r:<tenant>:<repo>`) holds, kept
-- only while the cap exists: setting a cap counts them afresh from `leases`
-- (`recount_held`), removing it drops the count. A run takes its slots after
-- its transition to running and gives them back before it leaves running
-- or cancelling; at a cap a repository or tenant is parked.
local function move_slots(r, caps, delta)
  if caps.repo then
    local held = redis.call('HINCRBY', p .. 'held', repo_member(r.tenant, r.repo), delta)
    park_repo(r.tenant, r.repo, held >= caps.repo)
  end
  if caps.tenant then
    park_tenant(r.tenant, redis.call('HINCRBY', p .. 'held', 't:' .. r.tenant, delta) >= caps.tenant)
  end
end

local function hold_slot(r, caps)
  move_slots(r, caps, 1)
end

local function free_slot(r)
  move_slots(r, limits_of(r.tenant, r.repo), -1)
end

-- The runs holding a slot of the tenant (and, with `repo`, of that
-- repository) now, counted from the leases: work in proportion to the runs
-- running, done only when a cap is set.
local function recount_held(tenant, repo)
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', p .. 'leases', 0, -1)) do
    local j = redis.call('HMGET', p .. 'job:' .. id, 'tenant', 'repo')
    if j[1] == tenant and (repo == nil or j[2] == repo) then
      n = n + 1
    end
  end
  return n
end

-- Drops up to `n` of the oldest index entries whose run record has
-- expired, stopping at the first live one (the reaper's work).
local function prune_index(key, n)
  local pruned = 0
  for _, id in ipairs(redis.call('ZRANGE', key, 0, n - 1)) do
    if redis.call('EXISTS', p .. 'job:' .. id) == 1 then
      break
    end
    redis.call('ZREM', key, id)
    pruned = pruned + 1
  end
  return pruned
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

local function read_run(id)
  local j = redis.call('HMGET', p .. 'job:' .. id, 'state', 'tenant', 'repo', 'band', 'enq_score', 'lane')
  return j[1], run_of(id, j[2], j[3], j[4], j[6]), tonumber(j[5])
end

-- A run of the lane that has not started gives way to a newer trigger.
local function supersede(id, by, now, ttl_s)
  local state, r = read_run(id)
  if state ~= 'queued' and state ~= 'waiting' then
    return
  end
  if state == 'queued' then
    unqueue(r)
  end
  finalize(r, state, 'cancelled', now, superseded_reason(by), '[]', ttl_s)
end

-- Run `r` (state `from`) joins its lane: it owns the lane and is queued
-- when the lane is free or its owner has not started (the owner is then
-- superseded), else it waits behind the running owner, replacing any run
-- already waiting. Without a lane it is queued. Returns its state.
local function enter_lane(r, seq, from, now, ttl_s)
  local function queue()
    if from ~= 'queued' then
      transition(r, from, 'queued')
    end
    make_ready(r, seq)
    return 'queued'
  end
  if r.lane == nil or r.lane == '' then
    return queue()
  end
  local key = lane_key(r.lane)
  local waiting = redis.call('GET', key .. ':next')
  if waiting then
    redis.call('DEL', key .. ':next')
    supersede(waiting, r.id, now, ttl_s)
  end
  local owner = redis.call('GET', key)
  local owner_state = owner and redis.call('HGET', p .. 'job:' .. owner, 'state')
  if owner_state == 'queued' then
    redis.call('DEL', key)
    supersede(owner, r.id, now, ttl_s)
    owner_state = nil
  end
  if owner_state == 'running' or owner_state == 'cancelling' or owner_state == 'delayed' then
    redis.call('SET', key .. ':next', r.id)
    transition(r, from, 'waiting')
    return 'waiting'
  end
  redis.call('SET', key, r.id)
  return queue()
end

-- A run that ended hands its lane to the run waiting behind it.
local function leave_lane(r)
  if not r.lane or r.lane == '' then
    return
  end
  local key = lane_key(r.lane)
  if redis.call('GET', key .. ':next') == r.id then
    redis.call('DEL', key .. ':next')
    return
  end
  if redis.call('GET', key) ~= r.id then
    return
  end
  local nxt = redis.call('GET', key .. ':next')
  redis.call('DEL', key .. ':next')
  local state, n, seq
  if nxt then
    state, n, seq = read_run(nxt)
  end
  if state == 'waiting' then
    redis.call('SET', key, nxt)
    transition(n, 'waiting', 'queued')
    make_ready(n, seq)
  else
    redis.call('DEL', key)
  end
end

-- Ends a run for good: terminal state, reason (and `fields`, more pairs
-- for its record), expiry of the live record. Its index entries are pruned
-- by the reaper once the record is gone.
finalize = function(r, from, to, now, reason, artifacts, ttl_s, fields)
  local all = {'finished_ms', now, 'stop_reason', reason, 'artifacts', artifacts}
  for _, v in ipairs(fields or {}) do
    all[#all + 1] = v
  end
  transition(r, from, to, all)
  leave_lane(r)
  redis.call('EXPIRE', r.job, ttl_s)
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
