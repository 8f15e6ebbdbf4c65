-- admin_read: an operator's read of a record, expired or not. Writes
-- nothing: an unreadable record is returned as it is, not marked.
-- KEYS[1] record
-- ARGV: 1 clock offset
-- Returns {now, fields} with the HMGET array of FIELDS, {now, false} when
-- nothing is stored at the key, {now, 'W'} when it holds something other
-- than a hash.
local now = clock(ARGV[1])
local raw = redis.pcall('HMGET', KEYS[1], unpack(FIELDS))
if type(raw) == 'table' and raw.err then
  return { now, 'W' }
end
for i = 1, #FIELDS do
  if raw[i] then
    return { now, raw }
  end
end
return { now, false }
