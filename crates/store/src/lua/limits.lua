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
-- Enforced at once, removal too: nothing else un-parks without a cap.
local caps = limits_of(tenant, repo)
if kind == 'repo' then
  park_repo(tenant, repo, caps.repo ~= nil and repo_held(tenant, repo) >= caps.repo)
else
  park_tenant(tenant, caps.tenant ~= nil and tenant_held(tenant) >= caps.tenant)
end
return 1
