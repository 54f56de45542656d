-- CAPTURE: KEYS acct, hold key, hz; ARGV total (cumulative), hold_id.
-- Reply: total captured on this hold so far.
local now = now_ms()
sweep(KEYS[1], KEYS[3], now)
local h = redis.call('HMGET', KEYS[2], 'amount', 'captured', 'state')
if h[3] ~= 'open' then return closed_error(h[3], 'capture') end
local amount, captured = tonumber(h[1]), tonumber(h[2])
local total = tonumber(ARGV[1])
if total <= captured then return captured end
local err = settle(KEYS[1], amount, captured, total - captured)
if err then return err end
redis.call('HSET', KEYS[2], 'captured', total)
return total
