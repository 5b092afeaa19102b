-- ARGV: worker, lease_ms, then (id, epoch) pairs for the runs the worker holds
-- (bounded by its concurrency). Extends each lease still held under that
-- epoch. Returns one status per pair: 1 held, 2 held but cancel requested,
-- 0 lost (the worker must kill the sandbox and drop the result).
local worker, lease_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
redis.call('ZADD', p .. 'workers', now, worker)
local out = {}
for i = 3, #ARGV, 2 do
  local id, epoch = ARGV[i], ARGV[i + 1]
  local j = redis.call('HMGET', p .. 'job:' .. id, 'epoch', 'state')
  if j[1] == epoch and (j[2] == 'running' or j[2] == 'cancelling') then
    redis.call('ZADD', p .. 'leases', 'XX', 'GT', now + lease_ms, id)
    if j[2] == 'cancelling' then
      out[#out + 1] = 2
    else
      out[#out + 1] = 1
    end
  else
    out[#out + 1] = 0
  end
end
return out
