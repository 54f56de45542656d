-- RESERVE: KEYS acct, hold key, hz; ARGV amount, ttl_ms ('' = default), hold_id.
-- Reply: credits held.
local now = now_ms()
sweep(KEYS[1], KEYS[3], now)
local amount = tonumber(ARGV[1])
local ttl = DEFAULT_TTL_MS
if ARGV[2] ~= '' then ttl = tonumber(ARGV[2]) end
local h = redis.call('HMGET', KEYS[2], 'amount', 'ttl')
if h[1] then
  if tonumber(h[1]) == amount and tonumber(h[2]) == ttl then return amount end
  return redis.error_reply('CONFLICT hold id was used with other arguments')
end
local avail = num(redis.call('HGET', KEYS[1], 'available'))
if amount > avail then
  return redis.error_reply('INSUFFICIENT need ' .. fmt(amount) .. ' available ' .. fmt(avail))
end
redis.call('HINCRBY', KEYS[1], 'available', -amount)
redis.call('HINCRBY', KEYS[1], 'held', amount)
redis.call('HSET', KEYS[2], 'amount', amount, 'ttl', ttl, 'captured', 0, 'state', 'open',
  'expires', now + ttl)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[3])
return amount
