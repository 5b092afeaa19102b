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
-- Enforced at once, removal too: nothing else un-parks without a cap. The
-- slots held are counted afresh (see `recount_held`).
local caps = limits_of(tenant, repo)
local cap, member, held = caps.tenant, 't:' .. tenant, nil
if kind == 'repo' then
  cap, member = caps.repo, repo_member(tenant, repo)
end
if cap then
  if kind == 'repo' then
    held = recount_held(tenant, repo)
  else
    held = recount_held(tenant)
  end
  redis.call('HSET', p .. 'held', member, held)
else
  redis.call('HDEL', p .. 'held', member)
end
if kind == 'repo' then
  park_repo(tenant, repo, cap ~= nil and held >= cap)
else
  park_tenant(tenant, cap ~= nil and held >= cap)
end
return 1
