-- resolve (operator): Corrupted or Pending -> absent (D) or Failed (F).
-- KEYS[1] record, KEYS[2] its fence floor
-- ARGV: 1 clock offset, 2 mode (D|F), 3 reason, 4 retryable (1|0),
--       5 channel, 6 message
-- Returns {'N'} no live record, {'S', state} not allowed from that state,
-- {'OK', now, fields} with the record as it was.
local key = KEYS[1]
local now = clock(ARGV[1])
local r, bad = load(key)
if bad then
  corrupt(key, bad, now)
  r = load(key)
end
if r == nil or expired(r, now) then
  return { 'N' }
end
if r.s == 'C' or r.s == 'F' then
  return { 'S', r.s }
end
if ARGV[2] == 'D' then
  forget(r.n)
  redis.call('DEL', key)
else
  redis.call('HSET', key, 's', 'F', 'x', ARGV[3], 'y', ARGV[4], 'w', int(now),
    'e', int(now + DAY_MS))
  redis.call('HDEL', key, 't', 'd', 'o', 'r')
  keep_until(key, now + DAY_MS, now, r.n)
end
notify(ARGV[5], ARGV[6])
return { 'OK', now, r.raw }
