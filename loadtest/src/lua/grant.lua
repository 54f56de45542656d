-- GRANT: KEYS acct, grant key, hz; ARGV amount. Reply: available after the grant.
local now = now_ms()
sweep(KEYS[1], KEYS[3], now)
local amount = tonumber(ARGV[1])
local g = redis.call('HMGET', KEYS[2], 'amount', 'reply')
if g[1] then
  if tonumber(g[1]) == amount then return tonumber(g[2]) end
  return redis.error_reply('CONFLICT grant id was used with other arguments')
end
redis.call('HINCRBY', KEYS[1], 'granted', amount)
local avail = redis.call('HINCRBY', KEYS[1], 'available', amount)
redis.call('HSET', KEYS[2], 'amount', amount, 'reply', avail)
redis.call('PEXPIRE', KEYS[2], WINDOW_MS)
return avail
