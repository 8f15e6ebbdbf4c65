-- fail: Pending (this lease) -> Failed; retention restarts now.
-- KEYS[1] record, KEYS[2] its fence floor
-- ARGV: 1 clock offset, 2 token, 3 fence, 4 retention ms, 5 reason,
--       6 retryable (1|0), 7 channel, 8 message
-- Returns 1, or 0 when the lease no longer owns the record.
local key = KEYS[1]
local now = clock(ARGV[1])
local r = owned(key, ARGV[2], ARGV[3], now)
if r == nil then
  return 0
end
local expires = now + tonumber(ARGV[4])
redis.call('HSET', key, 's', 'F', 'x', ARGV[5], 'y', ARGV[6], 'w', int(now), 'e', int(expires))
redis.call('HDEL', key, 't', 'd', 'o', 'r', 'v')
keep_owned(key, r, expires, now)
notify_watchers(r, ARGV[7], ARGV[8])
return 1
