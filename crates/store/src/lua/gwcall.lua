-- A call to the standalone gateway, in one round trip: what the run token
-- (by its hash) grants, and the call counted in flight for the run's
-- worker (`gwcalls:open:<run>`, which `gateway_call_finished` takes down).
-- ARGV: the token's hash. Returns the grant's JSON, or false when the
-- token is not live (nothing counted).
local grant = redis.call('GET', p .. 'gwtok:' .. ARGV[1])
if not grant then
  return false
end
local open = p .. 'gwcalls:open:' .. cjson.decode(grant).run
redis.call('INCR', open)
redis.call('EXPIRE', open, 86400)
return grant
