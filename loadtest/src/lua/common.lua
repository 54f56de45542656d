-- Shared prelude of every creditd-loadtest script (prepended at SCRIPT LOAD).
--
-- Model: one hash per account  KEYS[1] = cd:{acct}
--          fields available, held, spent, expired (always 0: no bucket expiry
--          in this model), granted
--        one hash per hold     cd:{acct}:h:<hold_id>
--          fields amount, ttl, captured, state (open|committed|released|expired),
--          expires (ms), total + usage (after COMMIT), returned (after RELEASE)
--        one sorted set of open holds by expiry   cd:{acct}:hz
--        one key per debit / grant id             cd:{acct}:d:<id>, cd:{acct}:g:<id>
-- Invariant: granted = available + held + spent (+ expired, 0 here).
-- Holds expire lazily: every script first sweeps the account's due holds.
-- Time comes from the server (TIME), in Unix milliseconds, like creditd.

local WINDOW_MS = 86400000      -- idempotency records kept this long (creditd default)
local DEFAULT_TTL_MS = 900000   -- creditd's default hold_ttl_ms

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fmt(n)
  return string.format('%d', n)
end

local function num(v)
  if v == false or v == nil then return 0 end
  return tonumber(v)
end

-- Credits a hold still sets aside.
local function held_left(amount, captured)
  local left = amount - captured
  if left < 0 then return 0 end
  return left
end

-- Closes an open hold as expired: what it still held goes back to available.
local function expire_hold(acct, hz, hid, hk)
  local h = redis.call('HMGET', hk, 'amount', 'captured')
  local left = held_left(num(h[1]), num(h[2]))
  if left > 0 then
    redis.call('HINCRBY', acct, 'held', -left)
    redis.call('HINCRBY', acct, 'available', left)
  end
  redis.call('HSET', hk, 'state', 'expired')
  redis.call('PEXPIRE', hk, WINDOW_MS)
  redis.call('ZREM', hz, hid)
end

-- Expires every due hold of the account (a hold with expires E is live while now < E).
local function sweep(acct, hz, now)
  while true do
    local due = redis.call('ZRANGEBYSCORE', hz, '-inf', now, 'LIMIT', 0, 64)
    for _, hid in ipairs(due) do
      expire_hold(acct, hz, hid, acct .. ':h:' .. hid)
    end
    if #due < 64 then return end
  end
end

-- Settles `delta` more credits of a hold: from what it holds, the excess from
-- available. Returns nil on success, or an error reply (nothing changed).
local function settle(acct, amount, captured, delta)
  local from_hold = math.min(delta, held_left(amount, captured))
  local excess = delta - from_hold
  if excess > 0 then
    local avail = num(redis.call('HGET', acct, 'available'))
    if excess > avail then
      return redis.error_reply('INSUFFICIENT need ' .. fmt(excess) .. ' available ' .. fmt(avail))
    end
    redis.call('HINCRBY', acct, 'available', -excess)
  end
  if from_hold > 0 then
    redis.call('HINCRBY', acct, 'held', -from_hold)
  end
  if delta > 0 then
    redis.call('HINCRBY', acct, 'spent', delta)
  end
  return nil
end

-- The error for a command on a hold that is not open.
local function closed_error(state, verb)
  if state == 'expired' then
    return redis.error_reply('EXPIRED the hold expired')
  elseif state == 'committed' then
    return redis.error_reply('CONFLICT cannot ' .. verb .. ': the hold was committed')
  elseif state == 'released' then
    return redis.error_reply('CONFLICT cannot ' .. verb .. ': the hold was released')
  end
  return redis.error_reply('NOTFOUND no such hold')
end
