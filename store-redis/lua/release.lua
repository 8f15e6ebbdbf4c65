-- release: Pending (this lease) -> absent.
-- KEYS[1] record, KEYS[2] its fence floor
-- ARGV: 1 clock offset, 2 token, 3 fence, 4 channel, 5 message
-- Returns 1, or 0 when the lease no longer owns the record.
local key = KEYS[1]
local now = clock(ARGV[1])
local r = owned(key, ARGV[2], ARGV[3], now)
if r == nil then
  return 0
end
forget(r.n)
redis.call('DEL', key)
notify_watchers(r, ARGV[4], ARGV[5])
return 1
