-- ARGV: op (`reserve` or `release`), idem_key (`<caller>:<key>`), id,
--       fingerprint, idem_ttl_ms
-- `reserve` claims the key for run `id` before anything is written about
-- it, as pending for at most a minute (`enqueue` makes it the run's for
-- the whole TTL); returns {'reserved', id, 0, 0}, or {'existing', id,
-- same_request, pending} when another request holds it. `release` gives
-- it up, if `id` still holds it as pending (a run created with it keeps it,
-- even when its request was answered with an error after the write).
local op, idem, id, fingerprint, idem_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = p .. 'idem:' .. idem
if op == 'release' then
  local held = redis.call('HMGET', key, 'id', 'pending')
  if held[1] == id and held[2] then
    redis.call('DEL', key)
  end
  return {'released', id, 0, 0}
end
local seen = redis.call('HMGET', key, 'id', 'fingerprint', 'pending')
if seen[1] then
  local same, pending = 0, 0
  if seen[2] == fingerprint then
    same = 1
  end
  if seen[3] then
    pending = 1
  end
  return {'existing', seen[1], same, pending}
end
redis.call('HSET', key, 'id', id, 'fingerprint', fingerprint, 'pending', '1')
redis.call('PEXPIRE', key, math.min(idem_ttl, 60000))
return {'reserved', id, 0, 0}
