-- claim: insert, take over an expired lease, re-claim a retryable failure,
-- or report the existing record. One atomic decision.
-- KEYS[1] record, KEYS[2] its fence floor
-- ARGV: 1 clock offset, 2 fingerprint, 3 lease ms, 4 retention ms,
--       5 max attempts, 6 new lease token, 7 channel, 8 message
-- Returns one of:
--   {'A', kind (N|T|R), fence, attempt, deadline}   acquired
--   {'I', retry_after ms, attempt}                   in flight
--   {'C', outcome, resource|nil, completed_at, fence} completed
--   {'F', reason, retryable 0|1, failed_at}           failed, replay
--   {'M'}                                             fingerprint mismatch
--   {'X', detail}                                     corrupted
local key = KEYS[1]
local now = clock(ARGV[1])
local fingerprint = ARGV[2]
local lease = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local max_attempts = math.max(tonumber(ARGV[5]), 1)
local token = ARGV[6]

-- The record as claim_fast.lua read it (the same script: nothing has
-- changed since).
local r, bad = decode(PRELOADED)
if bad then
  corrupt(key, bad, now)
  notify(ARGV[7], ARGV[8])
  return { 'X', bad }
end
-- The fence of the record (even an expired one) is the last known fence.
local last = r and r.n
if r and expired(r, now) then
  redis.call('DEL', key)
  r = nil
end

if r == nil then
  local deadline = now + lease
  local ttl = math.max(math.max(now + retention, deadline) - now, 1)
  local fence = draw_fence(last, ARGV[1], ttl)
  redis.call('HSET', key, 's', 'P', 'f', fingerprint, 'n', int(fence), 'a', '1', 'c', int(now),
    'e', int(now + retention), 't', token, 'd', int(deadline))
  redis.call('PEXPIRE', key, int(ttl))
  return { 'A', 'N', fence, 1, deadline }
end

if r.s == 'X' then
  return { 'X', r.x or '' }
end
if r.f ~= fingerprint then
  return { 'M' }
end

local kind
if r.s == 'P' then
  if r.d > now then
    return { 'I', r.d - now, r.a }
  end
  if r.a >= max_attempts then
    local reason = 'lease expired on attempt ' .. int(r.a) .. ' of ' .. int(max_attempts)
      .. ': no attempts left'
    redis.call('HSET', key, 's', 'F', 'x', reason, 'y', '0', 'w', int(now),
      'e', int(now + retention))
    redis.call('HDEL', key, 't', 'd', 'v')
    keep_owned(key, r, now + retention, now)
    notify_watchers(r, ARGV[7], ARGV[8])
    return { 'F', reason, 0, now }
  end
  kind = 'T'
elseif r.s == 'C' then
  return { 'C', r.o, r.r, r.w, r.n }
elseif r.y == '1' and r.a < max_attempts then
  kind = 'R'
else
  return { 'F', r.x, tonumber(r.y), r.w }
end

local attempt = r.a + 1
local deadline = now + lease
local expires = math.max(r.e, deadline)
local ttl = math.max(expires - now, 1)
local fence = draw_fence(r.n, ARGV[1], ttl)
redis.call('HSET', key, 's', 'P', 'n', int(fence), 'a', int(attempt), 't', token,
  'd', int(deadline), 'e', int(expires))
-- A takeover keeps `v`: the waiters of the lost lease wait on.
redis.call('HDEL', key, 'o', 'r', 'x', 'y', 'w')
redis.call('PEXPIRE', key, int(ttl))
return { 'A', kind, fence, attempt, deadline }
