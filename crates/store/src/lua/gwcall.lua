-- A standalone gateway's calls, each counted in flight for the run's
-- worker (`gwcalls:open:<run>`) from its token's lookup until it is booked
-- or ends unbooked.
-- ARGV[1] is the operation:
--   open: the token's hash. Returns the grant's JSON and counts the call,
--         or false when the token is not live (nothing counted).
--   done: the run, then the call's record (JSON), or nothing for a call
--         that ended unbooked. Appends the record to `gwcalls:<run>` and
--         takes the count down, only while the run's count exists: once
--         the run's end has taken its calls, a late one recreates nothing
--         (a count left at -1 would hide a retried attempt's calls).
--         Returns 1, or 0 when the count was gone.
local op = ARGV[1]
if op == 'open' then
  local grant = redis.call('GET', p .. 'gwtok:' .. ARGV[2])
  if not grant then
    return false
  end
  local open = p .. 'gwcalls:open:' .. cjson.decode(grant).run
  redis.call('INCR', open)
  redis.call('EXPIRE', open, 86400)
  return grant
end
local run, call = ARGV[2], ARGV[3]
local open = p .. 'gwcalls:open:' .. run
if redis.call('EXISTS', open) == 0 then
  return 0
end
if call then
  local list = p .. 'gwcalls:' .. run
  redis.call('RPUSH', list, call)
  redis.call('EXPIRE', list, 86400)
end
if redis.call('DECR', open) < 0 then
  redis.call('SET', open, 0, 'KEEPTTL')
end
return 1
