-- Give back an in-flight lease and record an API 1000 (worker.store.limiter.ClusterLimiter).
-- KEYS[1]  the in-flight leases   KEYS[2]  the wake-up list   KEYS[3]  busy-until (bulk)
-- KEYS[4]  busy-until (urgent too)
-- ARGV[1]  lease id ('' for none) ARGV[2]  max in flight
-- ARGV[3]  busy duration in microseconds (0: the attempt was not answered with 1000)
-- ARGV[4]  1: the attempt went while bulk was already slowed down (a 1000 then slows urgent)
-- Reply: 1.
if ARGV[1] ~= '' and redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', KEYS[2], 60000)
end
local busy = tonumber(ARGV[3])
if busy > 0 then
  local t = redis.call('TIME')
  local busy_until = tonumber(t[1]) * 1000000 + tonumber(t[2]) + busy
  local keys = {KEYS[3]}
  if ARGV[4] == '1' then keys[2] = KEYS[4] end
  for _, key in ipairs(keys) do
    if busy_until > tonumber(redis.call('GET', key) or '0') then
      redis.call('SET', key, string.format('%.0f', busy_until), 'PX', math.ceil(busy / 1000))
    end
  end
end
return 1
