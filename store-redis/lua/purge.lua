-- purge: deletes a record that is expired by its stored timestamps, which
-- Redis has not removed yet (its PX is longer, or was removed); anything
-- else is left alone. The fence floor stays FLOOR_MARGIN_MS, as after a
-- release, so a later claim still draws a greater fence.
-- KEYS[1] record, KEYS[2] its fence floor
-- ARGV: 1 clock offset
-- Returns 1 when the record was deleted, 0 when it was kept.
local now = clock(ARGV[1])
local r, bad = load(KEYS[1])
if r == nil or bad ~= nil or not expired(r, now) then
  return 0
end
forget(r.n)
redis.call('DEL', KEYS[1])
return 1
