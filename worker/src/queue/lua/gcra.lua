-- ARGV: name, emission_interval_ms, burst
-- Generic cell rate algorithm: one key per limited thing (a tenant, a
-- provider), holding its theoretical arrival time. Shared by every gateway
-- replica, timed by Redis. Returns {1, 0} when allowed, {0, retry_after_ms}
-- when not.
local name, interval, burst = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local key = p .. 'gcra:' .. name
local now = now_ms()
local tat = tonumber(redis.call('GET', key) or now)
if tat < now then
  tat = now
end
local allow_at = tat + interval - interval * burst
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', key, new_tat, 'PX', math.max(1, new_tat - now))
return {1, 0}
