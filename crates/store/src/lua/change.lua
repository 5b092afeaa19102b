-- An audited change to an identity or admin record: its event first, then
-- its writes, in one script, so no change exists without its event.
-- ARGV: max_backlog_ms, keep, mac, json, then a condition and the writes,
-- each as argc followed by the command and its arguments (a condition of
-- argc 0: none).
-- With a mac the event is sealed: it goes to the pending log and the index
-- (`audit` in lib.lua), refused, writing nothing, while the oldest pending
-- event is older than max_backlog_ms. Without one, to the index only.
-- A condition is a read (HEXISTS, EXISTS): when it answers non-zero,
-- nothing is written. Writes are the commands below, on keys of this
-- namespace; anything else is an error before anything is written. A
-- write that fails once the writes have begun (a key of another type)
-- leaves the event and the writes before it: Redis does not undo a
-- script's writes, so the event is written first, and a change never
-- exists without it.
-- Returns {'ok', 0}, {'unchanged', 0} or {'backlog', age_ms}.
local WRITES = {HSET = true, HSETNX = true, HDEL = true, SET = true, DEL = true, INCRBY = true}
local READS = {HEXISTS = true, EXISTS = true}
local max_backlog, keep, mac, json = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]

-- The command whose argc is at ARGV[at] (nil for argc 0), and where the
-- next one starts.
local function parse_one(at, allowed)
  local argc = tonumber(ARGV[at])
  if argc == 0 then
    return nil, at + 1
  end
  local command = {unpack(ARGV, at + 1, at + argc)}
  local name = string.upper(command[1])
  if not allowed[name] then
    error('change: ' .. name .. ' is not allowed here')
  end
  -- DEL takes only keys; the others one key, first.
  local last_key = name == 'DEL' and #command or 2
  for i = 2, last_key do
    if string.sub(command[i] or '', 1, #p) ~= p then
      error('change: ' .. name .. ' on a key outside the namespace')
    end
  end
  return command, at + 1 + argc
end

local condition, at = parse_one(5, READS)
local writes = {}
while at <= #ARGV do
  local write
  write, at = parse_one(at, WRITES)
  writes[#writes + 1] = write
end
if condition and redis.call(unpack(condition)) ~= 0 then
  return {'unchanged', 0}
end
local now = now_ms()
if mac ~= '' then
  local backlog = audit_backlog_ms(now)
  if backlog > max_backlog then
    return {'backlog', backlog}
  end
  audit(mac, json)
  flush_audit(keep, now)
else
  redis.call('RPUSH', p .. 'audit:events', json)
  redis.call('LTRIM', p .. 'audit:events', -keep, -1)
end
for _, write in ipairs(writes) do
  redis.call(unpack(write))
end
return {'ok', 0}
