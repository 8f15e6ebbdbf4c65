-- get: reads a record; expired records read as absent, unreadable ones are
-- turned into corrupted records first.
-- KEYS[1] record
-- ARGV: 1 clock offset, 2 channel, 3 message, 4 watch (1: a waiter reads
--       the record before it sleeps; a live pending record is marked `v`, so
--       the transition that ends it announces itself)
-- Returns {now, fields} where fields is the HMGET array of FIELDS, or
-- {now, nil} when there is no live record.
local key = KEYS[1]
local now = clock(ARGV[1])
local r, bad = load(key)
if bad then
  corrupt(key, bad, now)
  notify(ARGV[2], ARGV[3])
  r = load(key)
end
if r == nil or expired(r, now) then
  return { now, false }
end
if ARGV[4] == '1' and r.s == 'P' and not r.v then
  redis.call('HSET', key, 'v', '1')
end
return { now, r.raw }
