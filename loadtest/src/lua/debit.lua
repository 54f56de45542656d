-- DEBIT: KEYS acct, debit key, hz; ARGV amount. Reply: credits debited, at once.
local now = now_ms()
sweep(KEYS[1], KEYS[3], now)
local amount = tonumber(ARGV[1])
local d = redis.call('HGET', KEYS[2], 'amount')
if d then
  if tonumber(d) == amount then return amount end
  return redis.error_reply('CONFLICT debit id was used with other arguments')
end
local avail = num(redis.call('HGET', KEYS[1], 'available'))
if amount > avail then
  return redis.error_reply('INSUFFICIENT need ' .. fmt(amount) .. ' available ' .. fmt(avail))
end
redis.call('HINCRBY', KEYS[1], 'available', -amount)
redis.call('HINCRBY', KEYS[1], 'spent', amount)
redis.call('HSET', KEYS[2], 'amount', amount)
redis.call('PEXPIRE', KEYS[2], WINDOW_MS)
return amount
