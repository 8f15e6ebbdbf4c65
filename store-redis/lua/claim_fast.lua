-- claim, fast paths for the three common cases, placed before the shared
-- helpers so that none defines any of them (defining them costs about a
-- third of a new key's claim on the server):
--   * a replay: a live, well-formed completed record is answered from the
--     one HMGET, with the checks `decode` makes of such a record;
--   * in flight: a well-formed pending record whose lease is live is
--     answered the same way (a burst's duplicates);
--   * a new key: no record at all is claimed with the same four commands
--     and the same reply as `claim.lua`'s insert.
-- Anything else (expired, a lapsed lease, failed, corrupted, malformed, a
-- floor that is not a string) falls through to `claim.lua`, which decodes
-- the same read (PRELOADED) instead of reading the record again.
-- KEYS and ARGV as in claim.lua. The clock is prelude.lua's: a fall-through
-- decides at the instant the fast path read.
-- Numbers are passed to redis.call as Lua numbers: Redis writes an integral
-- one as a plain integer (what `int` in common.lua makes, without its cost).
local PRELOADED = redis.pcall('HMGET', KEYS[1],
  's', 'f', 'n', 'a', 'c', 'e', 't', 'd', 'o', 'r', 'x', 'y', 'w', 'v')
do
  local raw = PRELOADED
  local state = raw[1]
  if state == 'C' or state == 'P' then
    local now = clock(ARGV[1])
    local f, fence, attempts, e = raw[2], count(raw[3]), count(raw[4]), count(raw[6])
    if f and #f == 32 and fence and attempts and count(raw[5]) and e then
      if state == 'C' then
        local w = count(raw[13])
        if raw[9] and w and e > now then
          if f ~= ARGV[2] then
            return { 'M' }
          end
          return { 'C', raw[9], raw[10], w, fence }
        end
      else
        -- A live lease (d > now) also means a record that has not expired.
        local token, d = raw[7], count(raw[8])
        if token and #token == 16 and d and d > now then
          if f ~= ARGV[2] then
            return { 'M' }
          end
          return { 'I', d - now, attempts }
        end
      end
    end
  elseif not raw.err and not (raw[1] or raw[2] or raw[3] or raw[4] or raw[5] or raw[6]
      or raw[7] or raw[8] or raw[9] or raw[10] or raw[11] or raw[12] or raw[13] or raw[14]) then
    -- No record: what `claim.lua` does for r == nil with last == nil
    -- (`draw_fence` reading the floor by SET ... GET), inlined.
    local now = clock(ARGV[1])
    local deadline = now + tonumber(ARGV[3])
    local expires = now + tonumber(ARGV[4])
    local ttl = math.max(math.max(expires, deadline) - now, 1)
    local px = ttl + FLOOR_MARGIN_MS
    local fence = clock_us(ARGV[1])
    local old = redis.pcall('SET', KEYS[2], fence, 'PX', px, 'GET')
    if not (type(old) == 'table' and old.err) then
      local floor = count(old)
      if floor ~= nil and floor >= fence then
        fence = floor + 1
        redis.call('SET', KEYS[2], fence, 'PX', px)
      end
      redis.call('HSET', KEYS[1], 's', 'P', 'f', ARGV[2], 'n', fence, 'a', '1', 'c', now,
        'e', expires, 't', ARGV[6], 'd', deadline)
      redis.call('PEXPIRE', KEYS[1], ttl)
      return { 'A', 'N', fence, 1, deadline }
    end
  end
end
