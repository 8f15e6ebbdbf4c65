-- release: Pending (this lease) -> absent.
-- KEYS[1] record
-- ARGV: 1 clock offset, 2 token, 3 fence, 4 channel, 5 message
-- Returns 1, or 0 when the lease no longer owns the record.
local key = KEYS[1]
local now = clock(ARGV[1])
if owned(key, ARGV[2], ARGV[3], now) == nil then
  return 0
end
redis.call('DEL', key)
notify(ARGV[4], ARGV[5])
return 1
