-- Budgets of a run and of a tenant (per UTC day), in tokens and in cost
-- (micro-dollars), as hashes {used, reserved, cost_used, cost_reserved}.
-- Reserve before a model call from its worst case; settle after it from
-- reported usage, releasing the reservation.
-- ARGV: op (`reserve` | `settle`), run, tenant,
--       tokens, actual_tokens, run_tokens_limit, tenant_tokens_limit,
--       cost, actual_cost, run_cost_limit, tenant_cost_limit (limits 0: none),
--       day (settle: the UTC day its reservation was made on)
-- reserve returns {1, '', day} or {0, 'run' | 'tenant' | 'run cost' | 'tenant cost', day};
-- settle returns {1, '', day}. A call that spans midnight is settled on
-- the day it reserved, so no day's reservations go negative.
local op, run, tenant = ARGV[1], ARGV[2], ARGV[3]
local tokens, actual_tokens = tonumber(ARGV[4]), tonumber(ARGV[5])
local run_tokens_limit, tenant_tokens_limit = tonumber(ARGV[6]), tonumber(ARGV[7])
local cost, actual_cost = tonumber(ARGV[8]), tonumber(ARGV[9])
local run_cost_limit, tenant_cost_limit = tonumber(ARGV[10]), tonumber(ARGV[11])
local day = tonumber(ARGV[12])
if op ~= 'settle' or not day then
  local t = redis.call('TIME')
  day = math.floor(tonumber(t[1]) / 86400)
end
local run_key = p .. 'budget:run:' .. run
local tenant_key = p .. 'budget:tenant:' .. tenant .. ':' .. day
local function spent(key, used, reserved)
  local v = redis.call('HMGET', key, used, reserved)
  return (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
end
local function over(key, used, reserved, amount, limit)
  return limit > 0 and spent(key, used, reserved) + amount > limit
end
if op == 'reserve' then
  if over(run_key, 'used', 'reserved', tokens, run_tokens_limit) then return {0, 'run', day} end
  if over(tenant_key, 'used', 'reserved', tokens, tenant_tokens_limit) then return {0, 'tenant', day} end
  if over(run_key, 'cost_used', 'cost_reserved', cost, run_cost_limit) then return {0, 'run cost', day} end
  if over(tenant_key, 'cost_used', 'cost_reserved', cost, tenant_cost_limit) then return {0, 'tenant cost', day} end
  for _, key in ipairs({run_key, tenant_key}) do
    redis.call('HINCRBY', key, 'reserved', tokens)
    redis.call('HINCRBY', key, 'cost_reserved', cost)
  end
else
  -- `-n` of 0 would be "-0", which HINCRBY refuses; %d prints "0".
  local function minus(n) return string.format('%d', -n) end
  for _, key in ipairs({run_key, tenant_key}) do
    redis.call('HINCRBY', key, 'reserved', minus(tokens))
    redis.call('HINCRBY', key, 'used', actual_tokens)
    redis.call('HINCRBY', key, 'cost_reserved', minus(cost))
    redis.call('HINCRBY', key, 'cost_used', actual_cost)
  end
end
redis.call('EXPIRE', run_key, 7 * 86400)
redis.call('EXPIRE', tenant_key, 2 * 86400)
return {1, '', day}
