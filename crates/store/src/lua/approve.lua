-- ARGV: id, by
-- A run awaiting approval joins its repository's queue at the place it was
-- accepted (its sequence number), recording who approved it. Returns the
-- state after the call, or nil when the run does not exist.
local id, by = ARGV[1], ARGV[2]
local job = p .. 'job:' .. id
local j = redis.call('HMGET', job, 'state', 'tenant', 'repo', 'band', 'enq_score')
local state, tenant, repo, band, seq = j[1], j[2], j[3], j[4], j[5]
if not state then
  return nil
end
if state ~= 'awaiting_approval' then
  return state
end
redis.call('HSET', job, 'approved_by', by)
transition(id, tenant, repo, state, 'queued')
make_ready(id, band, tenant, repo, tonumber(seq))
return 'queued'
