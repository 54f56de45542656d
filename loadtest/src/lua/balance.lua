-- BALANCE: KEYS acct, hz. Reply: available held spent expired granted, as
-- creditd's RESP2 field/value array (after expiring due holds).
local now = now_ms()
sweep(KEYS[1], KEYS[2], now)
local b = redis.call('HMGET', KEYS[1], 'available', 'held', 'spent', 'expired', 'granted')
return { 'available', num(b[1]), 'held', num(b[2]), 'spent', num(b[3]),
  'expired', num(b[4]), 'granted', num(b[5]) }
