-- ARGV: id, by, ttl_s (for a run of its pull request it supersedes)
-- A run awaiting approval joins its repository's queue at the place it was
-- accepted (its sequence number), or its pull request's lane, recording who
-- approved it. Returns the state after the call, or nil when the run does
-- not exist.
local id, by, ttl_s = ARGV[1], ARGV[2], tonumber(ARGV[3])
local job = p .. 'job:' .. id
local j = redis.call('HMGET', job, 'state', 'tenant', 'repo', 'band', 'enq_score', 'lane')
local state, tenant, repo, band, seq = j[1], j[2], j[3], j[4], j[5]
if not state then
  return nil
end
if state ~= 'awaiting_approval' then
  return state
end
redis.call('HSET', job, 'approved_by', by)
return enter_lane(id, band, tenant, repo, tonumber(seq), j[6], state, now_ms(), ttl_s)
