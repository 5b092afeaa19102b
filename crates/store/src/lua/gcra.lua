-- ARGV: name, emission_interval_ms (may be fractional), burst, cost
-- Generic cell rate algorithm: one key per limited thing (a tenant's or a
-- provider's requests or tokens), holding its theoretical arrival time.
-- Shared by every gateway replica, timed by Redis. A call takes `cost`
-- cells (1 for a request, its worst-case tokens for a token limit; capped
-- at the burst, so a call larger than the whole allowance waits for a full
-- bucket instead of never passing). A negative cost gives cells back (the
-- unused part of a worst case). Returns {1, 0} when allowed, {0,
-- retry_after_ms} when not.
local name, interval = ARGV[1], tonumber(ARGV[2])
local burst, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local key = p .. 'gcra:' .. name
local now = now_ms()
local tat = tonumber(redis.call('GET', key) or now)
if tat < now then
  tat = now
end
local function store(value)
  if value <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%.3f', value), 'PX', math.max(1, math.ceil(value - now)))
  end
end
if cost < 0 then
  store(math.max(now, tat + interval * cost))
  return {1, 0}
end
cost = math.min(cost, burst)
local allow_at = tat + interval * cost - interval * burst
if now < allow_at then
  return {0, math.ceil(allow_at - now)}
end
store(tat + interval * cost)
return {1, 0}
