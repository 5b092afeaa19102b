-- Token budgets: a run's and a tenant's (per UTC day), as hashes
-- {used, reserved}. Reserve before a model call from its worst case; settle
-- after it from reported usage, releasing the reservation.
-- ARGV: op (`reserve` | `settle`), run, tenant, amount, actual,
--       run_limit (0: none), tenant_limit (0: none)
-- reserve returns {1, ''} or {0, 'run'|'tenant'}; settle returns {1, ''}.
local op, run, tenant = ARGV[1], ARGV[2], ARGV[3]
local amount, actual = tonumber(ARGV[4]), tonumber(ARGV[5])
local run_limit, tenant_limit = tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local day = math.floor(tonumber(t[1]) / 86400)
local run_key = p .. 'budget:run:' .. run
local tenant_key = p .. 'budget:tenant:' .. tenant .. ':' .. day
local function spent(key)
  local v = redis.call('HMGET', key, 'used', 'reserved')
  return (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
end
if op == 'reserve' then
  if run_limit > 0 and spent(run_key) + amount > run_limit then
    return {0, 'run'}
  end
  if tenant_limit > 0 and spent(tenant_key) + amount > tenant_limit then
    return {0, 'tenant'}
  end
  redis.call('HINCRBY', run_key, 'reserved', amount)
  redis.call('HINCRBY', tenant_key, 'reserved', amount)
else
  redis.call('HINCRBY', run_key, 'reserved', 0 - amount)
  redis.call('HINCRBY', run_key, 'used', actual)
  redis.call('HINCRBY', tenant_key, 'reserved', 0 - amount)
  redis.call('HINCRBY', tenant_key, 'used', actual)
end
redis.call('EXPIRE', run_key, 7 * 86400)
redis.call('EXPIRE', tenant_key, 2 * 86400)
return {1, ''}
