-- COMMIT: KEYS acct, hold key, hz; ARGV total ('' = the whole hold), hold_id.
-- Reply: final total debited. Releases the rest and closes the hold.
local now = now_ms()
sweep(KEYS[1], KEYS[3], now)
local h = redis.call('HMGET', KEYS[2], 'amount', 'captured', 'state', 'total', 'usage')
if h[3] == 'committed' then
  if h[5] == ARGV[1] then return tonumber(h[4]) end
  return redis.error_reply('CONFLICT the hold was committed with other arguments')
end
if h[3] ~= 'open' then return closed_error(h[3], 'commit') end
local amount, captured = tonumber(h[1]), tonumber(h[2])
local total = amount
if ARGV[1] ~= '' then total = tonumber(ARGV[1]) end
local final = math.max(total, captured)
local delta = final - captured
local left = held_left(amount, captured)
local err = settle(KEYS[1], amount, captured, delta)
if err then return err end
local rest = left - math.min(delta, left)
if rest > 0 then
  redis.call('HINCRBY', KEYS[1], 'held', -rest)
  redis.call('HINCRBY', KEYS[1], 'available', rest)
end
redis.call('HSET', KEYS[2], 'state', 'committed', 'captured', final, 'total', final,
  'usage', ARGV[1])
redis.call('PEXPIRE', KEYS[2], WINDOW_MS)
redis.call('ZREM', KEYS[3], ARGV[2])
return final
