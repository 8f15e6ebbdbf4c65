-- Shared helpers, prepended to every script of this crate (after
-- `prelude.lua`, which defines `count`, the floor's margins and the clock).
--
-- A record is one hash at KEYS[1] = "<prefix>:{<64-hex storage key>}":
--   s  state: P pending, C completed, F failed, X corrupted
--   f  request fingerprint (32 raw bytes)
--   n  fence (highest fencing number issued)
--   a  attempts (executions started)
--   c  created_at (ms, store clock)
--   e  expires_at (ms, store clock; absent on corrupted records: never)
--   t  lease token (16 raw bytes)                 P
--   d  lease deadline (ms, store clock)           P
--   o  outcome bytes (Outcome::encode)            C
--   r  resource reference (optional)              C
--   x  failure reason / corruption detail         F, X
--   y  retryable: 1 or 0                          F
--   w  completed_at / failed_at / detected_at (ms) C, F, X
--   v  watched: 1 once a waiter asked to be woken P
--
-- "Store clock" = Redis TIME in ms + the offset passed as ARGV[1] (zero
-- except in tests that move the clock). The key's PX is always at least
-- the record's remaining stored lifetime, so Redis never evicts a record
-- that still counts; the stored timestamps decide expiry.
--
-- The fence floor, KEYS[2] = "<prefix>:{<64-hex storage key>}:fence" (same
-- hash slot as the record), holds the record's fence as a plain integer and
-- outlives the record by FLOOR_MARGIN_MS: whenever a script sets the
-- record's PX it rewrites the floor with a PX that much longer, and a
-- script deleting the record leaves the floor for FLOOR_MARGIN_MS. A claim
-- draws max(last fence + 1, store clock in microseconds), "last" from the
-- record if there is one, else from the floor. Scripts that never change
-- the record's PX (get, mark_corrupted) get no KEYS[2].

local FIELDS = { 's', 'f', 'n', 'a', 'c', 'e', 't', 'd', 'o', 'r', 'x', 'y', 'w', 'v' }
local DAY_MS = 86400000
local FLOOR = KEYS[2]

-- Integers always travel as plain decimal strings.
local function int(n)
  return string.format('%.0f', n)
end

-- Decodes `raw`, the reply of HMGET <record> FIELDS (a pcall: an error
-- reply when the key is not a hash). Returns (rec, bad):
--   nil, nil     absent
--   rec, nil     a well-formed record (rec.raw holds the HMGET array)
--   rec?, bad    present but unreadable; `bad` says why
local function decode(raw)
  if type(raw) == 'table' and raw.err then
    return nil, 'record is not a hash'
  end
  local present = false
  for i = 1, #FIELDS do
    if raw[i] then
      present = true
      break
    end
  end
  if not present then
    return nil, nil
  end
  local r = {
    raw = raw, s = raw[1], f = raw[2], n = count(raw[3]), a = count(raw[4]),
    c = count(raw[5]), e = count(raw[6]), t = raw[7], d = count(raw[8]),
    o = raw[9], r = raw[10], x = raw[11], y = raw[12], w = count(raw[13]), v = raw[14],
  }
  if r.s == 'X' then
    return r, nil
  end
  if not (r.f and #r.f == 32 and r.n and r.a and r.c and r.e) then
    return r, 'record header is malformed'
  end
  if r.s == 'P' then
    if not (r.t and #r.t == 16 and r.d) then
      return r, 'pending record is malformed'
    end
  elseif r.s == 'C' then
    if not (r.o and r.w) then
      return r, 'completed record is malformed'
    end
  elseif r.s == 'F' then
    if not (r.x and (r.y == '1' or r.y == '0') and r.w) then
      return r, 'failed record is malformed'
    end
  else
    return r, 'unknown record state'
  end
  return r, nil
end

-- Reads and decodes the record at `key` (see `decode`).
local function load(key)
  return decode(redis.pcall('HMGET', key, unpack(FIELDS)))
end

-- Whether a record no longer counts at `now` (mirrors Record::is_expired).
local function expired(r, now)
  if r.s == 'X' then
    return false
  elseif r.s == 'P' then
    return r.e <= now and r.d <= now
  end
  return r.e <= now
end


-- The fence a claim that acquires draws: above the last one known for the
-- key (`last`: the record's, even an expired one's; nil when there was no
-- record, and then the floor's), and never below the clock. It is written to
-- the fence floor with a PX of `ttl` (the record's) + FLOOR_MARGIN_MS; when
-- the floor must be read, it is read and written by one SET ... GET.
local function draw_fence(last, offset, ttl)
  local fence = clock_us(offset)
  local px = int(ttl + FLOOR_MARGIN_MS)
  if last ~= nil then
    fence = math.max(last + 1, fence)
    redis.call('SET', FLOOR, int(fence), 'PX', px)
    return fence
  end
  local old = redis.pcall('SET', FLOOR, int(fence), 'PX', px, 'GET')
  if type(old) == 'table' and old.err then
    -- Not a string: replaced, as a plain SET would.
    redis.call('SET', FLOOR, int(fence), 'PX', px)
    return fence
  end
  local floor = count(old)
  if floor ~= nil and floor >= fence then
    fence = floor + 1
    redis.call('SET', FLOOR, int(fence), 'PX', px)
  end
  return fence
end

-- Keeps the key at least until `at` (store clock), counted from `now`, and
-- its fence floor (holding `fence`, when known) FLOOR_MARGIN_MS longer.
local function keep_until(key, at, now, fence)
  local ttl = math.max(at - now, 1)
  redis.call('PEXPIRE', key, int(ttl))
  if FLOOR and fence then
    redis.call('SET', FLOOR, int(fence), 'PX', int(ttl + FLOOR_MARGIN_MS))
  end
end

-- Keeps a record that a lease owned (`r`, as read) at least until `at`.
-- Its fence floor, written by the claim or the last renewal to expire
-- FLOOR_MARGIN_MS after max(r.e, r.d), is rewritten only if it would
-- otherwise outlive the record by less than FLOOR_KEEP_MS.
local function keep_owned(key, r, at, now)
  local ttl = math.max(at - now, 1)
  redis.call('PEXPIRE', key, int(ttl))
  if FLOOR and math.max(r.e, r.d) + FLOOR_MARGIN_MS < at + FLOOR_KEEP_MS then
    redis.call('SET', FLOOR, int(r.n), 'PX', int(ttl + FLOOR_MARGIN_MS))
  end
end

-- The record is about to be deleted: its fence floor stays FLOOR_MARGIN_MS.
local function forget(fence)
  if FLOOR and fence then
    redis.call('SET', FLOOR, int(fence), 'PX', FLOOR_MARGIN_MS)
  end
end

-- Wakes cross-process waiters (the channel and message are arguments: a
-- channel is not a key, so this is cluster-safe).
local function notify(channel, message)
  redis.call('PUBLISH', channel, message)
end

-- Wakes them only if one is waiting: a waiter marks the pending record it
-- waits on (`v`, see get.lua) before it sleeps, in the same order as the
-- transition that ends the wait, so a record left unmarked has no waiter
-- that has not yet seen its change.
local function notify_watchers(r, channel, message)
  if r.v then
    notify(channel, message)
  end
end

-- Turns whatever is at `key` into a corrupted record that never expires.
local function corrupt(key, detail, now)
  if redis.call('TYPE', key).ok ~= 'hash' then
    redis.call('DEL', key)
  end
  redis.call('HSET', key, 's', 'X', 'x', detail, 'w', int(now))
  redis.call('HDEL', key, 'e', 't', 'd', 'o', 'r', 'y')
  redis.call('PERSIST', key)
end

-- The record if the lease (token, fence) still owns it, else nil.
local function owned(key, token, fence, now)
  local r, bad = load(key)
  if r == nil or bad ~= nil or r.s ~= 'P' or r.t ~= token or r.n ~= tonumber(fence)
      or expired(r, now) then
    return nil
  end
  return r
end
