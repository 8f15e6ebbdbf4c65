-- complete, fast path for the common case, placed before the shared helpers
-- so that it defines none of them: the lease's own live, well-formed pending
-- record is completed from one HMGET of the fields `owned` checks, with the
-- same writes as `complete.lua`. Anything else (another lease, expired,
-- malformed, a fence written another way) falls through to `complete.lua`,
-- which decides from its own read, at the same instant (prelude.lua's clock).
-- KEYS and ARGV as in complete.lua. Numbers are passed to redis.call as
-- Lua numbers: Redis writes an integral one as a plain integer.
do
  local raw = redis.pcall('HMGET', KEYS[1], 's', 'f', 'n', 'a', 'c', 'e', 't', 'd', 'v')
  if not raw.err and raw[1] == 'P' and raw[7] == ARGV[2] and raw[3] == ARGV[3] then
    local f, fence, e, d = raw[2], count(raw[3]), count(raw[6]), count(raw[8])
    -- The checks `decode` makes of a pending record (the token, compared
    -- above, is 16 bytes).
    if f and #f == 32 and fence and count(raw[4]) and count(raw[5]) and e and #raw[7] == 16 and d then
      local now = clock(ARGV[1])
      if e > now or d > now then
        local expires = now + tonumber(ARGV[4])
        if ARGV[6] == '1' then
          redis.call('HSET', KEYS[1], 's', 'C', 'o', ARGV[5], 'w', now, 'e', expires, 'r', ARGV[7])
          redis.call('HDEL', KEYS[1], 't', 'd', 'x', 'y', 'v')
        else
          redis.call('HSET', KEYS[1], 's', 'C', 'o', ARGV[5], 'w', now, 'e', expires)
          redis.call('HDEL', KEYS[1], 't', 'd', 'x', 'y', 'v', 'r')
        end
        -- What common.lua's keep_owned does.
        local ttl = math.max(expires - now, 1)
        redis.call('PEXPIRE', KEYS[1], ttl)
        if math.max(e, d) + FLOOR_MARGIN_MS < expires + FLOOR_KEEP_MS then
          redis.call('SET', KEYS[2], fence, 'PX', ttl + FLOOR_MARGIN_MS)
        end
        if raw[9] then
          redis.call('PUBLISH', ARGV[8], ARGV[9])
        end
        return 1
      end
    end
  end
end
