-- The audit shipper's side of the pending log (see `audit` in lib.lua).
-- ARGV: op, holder, then
--   'lease', ttl_ms: takes the shipper's lease `lock:audit-shipper` when
--     free or renews it when `holder` has it; returns 1 when holder has it.
--   'trim', n, last_line, shipped_through: with the lease held by `holder`,
--     drops the first n pending entries, which the bucket now has, when the
--     n-th is last_line, and records shipped_through in `audit:shipped`;
--     returns 1, or 0 when the lease is someone else's (nothing trimmed:
--     they ship it again).
--   'release': gives the lease up when holder has it.
local op, holder = ARGV[1], ARGV[2]
local lease = p .. 'lock:audit-shipper'
local owner = redis.call('GET', lease)
if op == 'lease' then
  if owner == holder then
    redis.call('PEXPIRE', lease, tonumber(ARGV[3]))
    return 1
  end
  if owner then
    return 0
  end
  redis.call('SET', lease, holder, 'PX', tonumber(ARGV[3]))
  return 1
end
if owner ~= holder then
  return 0
end
if op == 'release' then
  redis.call('DEL', lease)
  return 1
end
local n = tonumber(ARGV[3])
if redis.call('LINDEX', p .. 'audit:pending', n - 1) ~= ARGV[4] then
  return redis.error_reply('the pending audit log changed under its shipper')
end
redis.call('LTRIM', p .. 'audit:pending', n, -1)
redis.call('SET', p .. 'audit:shipped', ARGV[5])
return 1
