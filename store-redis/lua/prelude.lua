-- Prepended to every script of this crate, before the fast paths and
-- `common.lua`: what both use, so that a fast path that falls through hands
-- the general path the same clock reading.

-- Writes after TIME are replicated as their effects (the default from
-- Redis 5; this store needs 6.2 for SET ... GET).
if redis.replicate_commands then
  redis.replicate_commands()
end

-- A stored count or timestamp: a non-negative integer, else nil.
local function count(v)
  local n = tonumber(v)
  if n == nil or n < 0 or n ~= math.floor(n) then
    return nil
  end
  return n
end

-- The fence floor is written to outlive the record by FLOOR_MARGIN_MS and
-- is rewritten whenever it would otherwise outlive it by less than
-- FLOOR_KEEP_MS (the documented guarantee).
local FLOOR_MARGIN_MS = 7200000
local FLOOR_KEEP_MS = 3600000

-- The server's TIME, read once per script: every "now" of one decision is
-- the same instant, fast path and general path alike.
local TIME

local function server_time()
  if TIME == nil then
    TIME = redis.call('TIME')
  end
  return TIME
end

-- The store clock in milliseconds: TIME + the clock offset (ARGV[1]).
local function clock(offset)
  local t = server_time()
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(offset)
end

-- The store clock in microseconds (fences are drawn from it).
local function clock_us(offset)
  local t = server_time()
  return tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(offset) * 1000
end
