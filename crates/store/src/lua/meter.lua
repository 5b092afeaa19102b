-- Metering shared by every gateway replica, timed by Redis: GCRA rate
-- limits (requests and tokens per minute) and budgets (tokens and
-- micro-dollars per run and per tenant UTC day).
--
-- A rate limit is one key per limited thing (a tenant's or a provider's
-- requests or tokens) holding its theoretical arrival time. A call takes
-- `cost` cells (1 for a request, its worst-case tokens for a token limit;
-- capped at the burst, so a call larger than the whole allowance waits for
-- a full bucket instead of never passing).
-- A budget is a hash {used, reserved, cost_used, cost_reserved}: a call
-- reserves its worst case before it is sent and settles after, from the
-- usage its provider reported.
--
-- ARGV[1] is the operation:
--   admit:  n, then n x (name, interval_ms, burst, cost), then the
--           reservation: run ('' for none), tenant, tokens,
--           run_tokens_limit, tenant_tokens_limit, cost, run_cost_limit,
--           tenant_cost_limit (limits 0: none).
--           Everything is checked before anything is taken: a call
--           refused by one limit or budget takes nothing from the others.
--           Returns {1, '', day, 0}; {0, 'rate', i, retry_after_ms} (the
--           i-th rate refused); {0, 'run' | 'tenant' | 'run cost' |
--           'tenant cost', day, 0} (that budget does not cover it).
--   refund: n, then n x (name, interval_ms, burst, amount): gives back
--           cells taken and not used. Returns {1, '', 0, 0}.
--   settle: run, tenant, day (of the reservation), tokens, actual_tokens,
--           cost, actual_cost: releases a reservation and books what the
--           call used, on the day it reserved (a call that spans midnight
--           leaves no day's reservations negative). Returns {1, '', day, 0}.
local op = ARGV[1]
local now = now_ms()

local function rate_key(name)
  return p .. 'gcra:' .. name
end

local function arrival(key)
  return math.max(now, tonumber(redis.call('GET', key) or now))
end

local function store_arrival(key, value)
  if value <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%.3f', value), 'PX', math.max(1, math.ceil(value - now)))
  end
end

-- The rates of ARGV from position 2 on: their keys, intervals, bursts and
-- costs, and where the arguments after them start.
local function rates()
  local n = tonumber(ARGV[2])
  local list = {}
  for i = 1, n do
    local at = 2 + (i - 1) * 4
    list[i] = {
      key = rate_key(ARGV[at + 1]),
      interval = tonumber(ARGV[at + 2]),
      burst = tonumber(ARGV[at + 3]),
      cost = tonumber(ARGV[at + 4]),
    }
  end
  return list, 3 + n * 4
end

local function budget_keys(run, tenant, day)
  return p .. 'budget:run:' .. run, p .. 'budget:tenant:' .. tenant .. ':' .. day
end

local function keep_budgets(run_key, tenant_key)
  redis.call('EXPIRE', run_key, 7 * 86400)
  redis.call('EXPIRE', tenant_key, 2 * 86400)
end

local function today()
  return math.floor(now / 86400000)
end

if op == 'refund' then
  for _, rate in ipairs((rates())) do
    store_arrival(rate.key, math.max(now, arrival(rate.key) - rate.interval * rate.cost))
  end
  return {1, '', 0, 0}
end

if op == 'settle' then
  local run, tenant, day = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local tokens, actual_tokens = tonumber(ARGV[5]), tonumber(ARGV[6])
  local cost, actual_cost = tonumber(ARGV[7]), tonumber(ARGV[8])
  local run_key, tenant_key = budget_keys(run, tenant, day)
  -- `-n` of 0 would be "-0", which HINCRBY refuses; %d prints "0".
  local function minus(n) return string.format('%d', -n) end
  for _, key in ipairs({run_key, tenant_key}) do
    redis.call('HINCRBY', key, 'reserved', minus(tokens))
    redis.call('HINCRBY', key, 'used', actual_tokens)
    redis.call('HINCRBY', key, 'cost_reserved', minus(cost))
    redis.call('HINCRBY', key, 'cost_used', actual_cost)
  end
  keep_budgets(run_key, tenant_key)
  return {1, '', day, 0}
end

-- admit
local list, at = rates()
local taken = {}
for i, rate in ipairs(list) do
  local tat = arrival(rate.key)
  local cost = math.min(rate.cost, rate.burst)
  local allow_at = tat + rate.interval * cost - rate.interval * rate.burst
  if now < allow_at then
    return {0, 'rate', i, math.ceil(allow_at - now)}
  end
  taken[i] = tat + rate.interval * cost
end
local day = today()
local run, tenant = ARGV[at], ARGV[at + 1]
local run_key, tenant_key
if run ~= '' then
  local tokens, run_tokens_limit, tenant_tokens_limit = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  local cost, run_cost_limit, tenant_cost_limit = tonumber(ARGV[at + 5]), tonumber(ARGV[at + 6]), tonumber(ARGV[at + 7])
  run_key, tenant_key = budget_keys(run, tenant, day)
  local function over(key, used, reserved, amount, limit)
    if limit <= 0 then return false end
    local v = redis.call('HMGET', key, used, reserved)
    return (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0) + amount > limit
  end
  if over(run_key, 'used', 'reserved', tokens, run_tokens_limit) then return {0, 'run', day, 0} end
  if over(tenant_key, 'used', 'reserved', tokens, tenant_tokens_limit) then return {0, 'tenant', day, 0} end
  if over(run_key, 'cost_used', 'cost_reserved', cost, run_cost_limit) then return {0, 'run cost', day, 0} end
  if over(tenant_key, 'cost_used', 'cost_reserved', cost, tenant_cost_limit) then return {0, 'tenant cost', day, 0} end
  for _, key in ipairs({run_key, tenant_key}) do
    redis.call('HINCRBY', key, 'reserved', tokens)
    redis.call('HINCRBY', key, 'cost_reserved', cost)
  end
  keep_budgets(run_key, tenant_key)
end
for i, rate in ipairs(list) do
  store_arrival(rate.key, taken[i])
end
return {1, '', day, 0}
