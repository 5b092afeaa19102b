-- ARGV: index (`all` or a state), cursor (a run id, or empty), limit (<= 100)
-- Returns run ids newest first, after the cursor; ids whose record expired
-- are dropped from the index on the way.
local index, cursor, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = p .. 'idx:all'
if index ~= 'all' then
  key = p .. 'idx:state:' .. index
end
local max = '+'
if cursor ~= '' then
  max = '(' .. cursor
end
local ids = redis.call('ZREVRANGEBYLEX', key, max, '-', 'LIMIT', 0, limit)
local live = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', p .. 'job:' .. id) == 1 then
    live[#live + 1] = id
  else
    redis.call('ZREM', key, id)
  end
end
local next_cursor = ''
if #ids == limit then
  next_cursor = ids[#ids]
end
return {live, next_cursor}
