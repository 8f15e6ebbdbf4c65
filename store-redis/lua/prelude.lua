-- Prepended to every script of this crate, before the fast paths and
-- `common.lua`: the one helper both use.

-- A stored count or timestamp: a non-negative integer, else nil.
local function count(v)
  local n = tonumber(v)
  if n == nil or n < 0 or n ~= math.floor(n) then
    return nil
  end
  return n
end
