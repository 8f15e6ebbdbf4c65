-- mark_corrupted: the observed live record -> Corrupted (never expires).
-- Compare-and-set on the state and fence the caller observed (the store's
-- own marks of undecodable data pass what they read, or '' for "any").
-- KEYS[1] record
-- ARGV: 1 clock offset, 2 detail, 3 expected fence ('' = any),
--       4 expected state ('' = any), 5 channel, 6 message
-- Returns 1 marked, 0 no live record, 2 the record is not the expected one
-- (it changed since it was read: nothing written).
local key = KEYS[1]
local now = clock(ARGV[1])
local r, bad = load(key)
if r == nil and bad == nil then
  return 0
end
if r and bad == nil and expired(r, now) then
  return 0
end
if ARGV[3] ~= '' and (r == nil or r.n ~= tonumber(ARGV[3])) then
  return 2
end
if ARGV[4] ~= '' and (r == nil or r.s ~= ARGV[4]) then
  return 2
end
corrupt(key, ARGV[2], now)
notify(ARGV[5], ARGV[6])
return 1
