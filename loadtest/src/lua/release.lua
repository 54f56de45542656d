-- RELEASE: KEYS acct, hold key, hz; ARGV hold_id.
-- Reply: credits returned to available (0 for a hold that expired).
local now = now_ms()
sweep(KEYS[1], KEYS[3], now)
local h = redis.call('HMGET', KEYS[2], 'amount', 'captured', 'state', 'returned')
if h[3] == 'expired' then return 0 end
if h[3] == 'released' then return tonumber(h[4]) end
if h[3] ~= 'open' then return closed_error(h[3], 'release') end
local left = held_left(tonumber(h[1]), tonumber(h[2]))
if left > 0 then
  redis.call('HINCRBY', KEYS[1], 'held', -left)
  redis.call('HINCRBY', KEYS[1], 'available', left)
end
redis.call('HSET', KEYS[2], 'state', 'released', 'returned', left)
redis.call('PEXPIRE', KEYS[2], WINDOW_MS)
redis.call('ZREM', KEYS[3], ARGV[1])
return left
