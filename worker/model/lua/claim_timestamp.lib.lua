-- Fragment (included by name, see worker.model.scripts): the one rule for request timestamps.
-- claim_timestamp(key, now, ttl) hands out max(now, last + 1) for the target's timestamp key
-- and records it for ttl seconds. Included by claim_timestamp.lua and limiter_acquire.lua.
local function claim_timestamp(key, now, ttl)
  local last = tonumber(redis.call('GET', key) or '0')
  local claimed = now
  if claimed <= last then claimed = last + 1 end
  redis.call('SET', key, claimed, 'EX', ttl)
  return claimed
end
