-- complete: Pending (this lease) -> Completed; retention restarts now.
-- KEYS[1] record, KEYS[2] its fence floor
-- ARGV: 1 clock offset, 2 token, 3 fence, 4 retention ms, 5 outcome bytes,
--       6 has resource (1|0), 7 resource, 8 channel, 9 message
-- Returns 1, or 0 when the lease no longer owns the record.
local key = KEYS[1]
local now = clock(ARGV[1])
local r = owned(key, ARGV[2], ARGV[3], now)
if r == nil then
  return 0
end
local expires = now + tonumber(ARGV[4])
if ARGV[6] == '1' then
  redis.call('HSET', key, 's', 'C', 'o', ARGV[5], 'w', int(now), 'e', int(expires), 'r', ARGV[7])
  redis.call('HDEL', key, 't', 'd', 'x', 'y', 'v')
else
  redis.call('HSET', key, 's', 'C', 'o', ARGV[5], 'w', int(now), 'e', int(expires))
  redis.call('HDEL', key, 't', 'd', 'x', 'y', 'v', 'r')
end
keep_owned(key, r, expires, now)
notify_watchers(r, ARGV[8], ARGV[9])
return 1
