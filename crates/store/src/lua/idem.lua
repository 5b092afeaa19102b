-- ARGV: op (`reserve` or `release`), idem_key (`<caller>:<key>`), id,
--       fingerprint, idem_ttl_ms
-- `reserve` claims the key for run `id` before anything is written about
-- it; returns {'reserved', id, 0}, or {'existing', id, same_request} when
-- another request holds it. `release` gives it up, if `id` still holds it.
local op, idem, id, fingerprint, idem_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = p .. 'idem:' .. idem
if op == 'release' then
  if redis.call('HGET', key, 'id') == id then
    redis.call('DEL', key)
  end
  return {'released', id, 0}
end
local seen = redis.call('HMGET', key, 'id', 'fingerprint')
if seen[1] then
  local same = 0
  if seen[2] == fingerprint then
    same = 1
  end
  return {'existing', seen[1], same}
end
redis.call('HSET', key, 'id', id, 'fingerprint', fingerprint)
redis.call('PEXPIRE', key, idem_ttl)
return {'reserved', id, 0}
