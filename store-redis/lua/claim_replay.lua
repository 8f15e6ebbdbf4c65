-- claim, fast path for a replay (the common case), placed before the shared
-- helpers so that a replay defines none of them: a live, well-formed
-- completed record is answered from one HMGET, with the checks `load` makes
-- of such a record and the same reply as `claim.lua`. Anything else (absent,
-- expired, pending, failed, corrupted, malformed) falls through to
-- `claim.lua`, which reads the record again.
-- KEYS and ARGV as in claim.lua.
do
  local function n(v)
    local x = tonumber(v)
    if x == nil or x < 0 or x ~= math.floor(x) then
      return nil
    end
    return x
  end
  local raw = redis.pcall('HMGET', KEYS[1], 's', 'f', 'n', 'a', 'c', 'e', 'o', 'r', 'w')
  if raw[1] == 'C' then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
    local f, fence, e, w = raw[2], n(raw[3]), n(raw[6]), n(raw[9])
    if f and #f == 32 and fence and n(raw[4]) and n(raw[5]) and e and raw[7] and w
        and e > now then
      if f ~= ARGV[2] then
        return { 'M' }
      end
      return { 'C', raw[7], raw[8], w, fence }
    end
  end
end
