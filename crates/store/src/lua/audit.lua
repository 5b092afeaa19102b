-- Appends audit events a process sealed (a worker's, about one run) to the
-- pending log and the index (see `audit` in lib.lua), unless the oldest
-- pending event is older than max_backlog_ms.
-- ARGV: max_backlog_ms, keep, run (or empty), cap, then mac, json per event.
-- With a run, at most `cap` of its events in all join the index (counted in
-- `audit:indexed:<run>`, kept 30 days); the pending log takes every one.
-- Returns {'ok', left out of the index} or {'backlog', age_ms} (nothing
-- written).
local now = now_ms()
local backlog = audit_backlog_ms(now)
if backlog > tonumber(ARGV[1]) then
  return {'backlog', backlog}
end
local HEAD = 4
local n = (#ARGV - HEAD) / 2
for i = 1, n do
  audit(ARGV[HEAD + 2 * i - 1], ARGV[HEAD + 2 * i])
end
local indexed = n
if ARGV[3] ~= '' then
  local key = p .. 'audit:indexed:' .. ARGV[3]
  local total = redis.call('INCRBY', key, n)
  redis.call('EXPIRE', key, 30 * 86400)
  indexed = math.max(0, math.min(n, tonumber(ARGV[4]) - (total - n)))
end
flush_audit(tonumber(ARGV[2]), now, indexed)
return {'ok', n - indexed}
