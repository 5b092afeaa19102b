-- ARGV: kind (`tenant` or `repo`), tenant, repo (empty for a tenant),
--       max_running (empty: no cap), weight (empty: unchanged; tenants only)
-- Sets the cap (and weight) and parks or un-parks at once to match it.
-- Returns 1.
local kind, tenant, repo, cap, weight = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local field = 'tenant:' .. tenant
if kind == 'repo' then
  field = 'repo:' .. tenant .. ':' .. repo
end
if cap == '' then
  redis.call('HDEL', p .. 'limits', field)
else
  redis.call('HSET', p .. 'limits', field, cap)
end
if weight ~= '' then
  redis.call('HSET', p .. 'limits', 'weight:' .. tenant, weight)
end
if kind == 'repo' then
  enforce_caps(tenant, repo)
else
  local tcap = limit('tenant:' .. tenant)
  park_tenant(tenant, tcap ~= nil and redis.call('SCARD', p .. 'running:tenant:' .. tenant) >= tcap)
end
return 1
