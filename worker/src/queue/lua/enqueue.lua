-- ARGV: id, tenant, repo, spec_json, max_attempts
-- Returns the creation time in ms, or an error if the id exists.
local id, tenant, repo, spec, max_attempts = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local job = p .. 'job:' .. id
if redis.call('EXISTS', job) == 1 then
  return redis.error_reply('EXISTS run ' .. id .. ' already exists')
end
local now = now_ms()
-- A sequence, not the clock, orders a repository's queue: runs enqueued in
-- the same millisecond keep their order.
local seq = redis.call('INCR', p .. 'seq')
redis.call('HSET', job, 'id', id, 'tenant', tenant, 'repo', repo, 'spec', spec,
  'state', 'queued', 'attempt', 0, 'max_attempts', max_attempts, 'epoch', 0,
  'created_ms', now, 'enq_score', seq)
make_ready(id, tenant, repo, seq)
redis.call('ZADD', p .. 'idx:all', 0, id)
redis.call('ZADD', p .. 'idx:state:queued', 0, id)
depth('queued', tenant, 1)
event(id, 'queued')
prune_index(p .. 'idx:all', 5)
return now
