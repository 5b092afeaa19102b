-- ARGV: id, by, ttl_s (for a run of its pull request it supersedes)
-- A run awaiting approval joins its repository's queue at the place it was
-- accepted (its sequence number), or its pull request's lane, recording who
-- approved it. Returns the state after the call, or nil when the run does
-- not exist.
local id, by, ttl_s = ARGV[1], ARGV[2], tonumber(ARGV[3])
local job = p .. 'job:' .. id
local state, r, seq = read_run(id)
if not state then
  return nil
end
if state ~= 'awaiting_approval' then
  return state
end
redis.call('HSET', job, 'approved_by', by)
local after = enter_lane(r, seq, state, now_ms(), ttl_s)
flush()
return after
