-- renew: Pending (this lease) -> Pending, deadline = now + lease.
-- KEYS[1] record, KEYS[2] its fence floor
-- ARGV: 1 clock offset, 2 token, 3 fence, 4 lease ms
-- Returns the new deadline, or nil when the lease no longer owns the record.
local key = KEYS[1]
local now = clock(ARGV[1])
local r = owned(key, ARGV[2], ARGV[3], now)
if r == nil then
  return false
end
local deadline = now + tonumber(ARGV[4])
local expires = math.max(r.e, deadline)
redis.call('HSET', key, 'd', int(deadline), 'e', int(expires))
keep_until(key, expires, now, r.n)
return deadline
