-- The cluster's rate limit, one attempt's turn (worker.store.limiter.RateLimiter.acquire).
-- Times are integer microseconds from Redis's own clock, so workers' clocks do not matter.
-- KEYS[1]  the cluster TAT                    KEYS[5]  the batch's TAT
-- KEYS[2]  busy-until (after an API 1000)     KEYS[6]  the job's slot
-- KEYS[3]  the in-flight leases (sorted set)  KEYS[7]  optional: the target's timestamp key
-- KEYS[4]  the batch hash                              (worker.api.clock), claimed on a go
-- ARGV[1]  cluster interval                   ARGV[7]  longest wait the caller will sleep
-- ARGV[2]  burst                              ARGV[8]  latest send time (0: none)
-- ARGV[3]  busy interval                      ARGV[9]  slot key lifetime (ms)
-- ARGV[4]  max in flight (0: none)            ARGV[10] local time (s) to claim a timestamp from
-- ARGV[5]  lease id                           ARGV[11] the timestamp key's lifetime (s)
-- ARGV[6]  lease length
-- Reply: {status, wait in microseconds}, and on a go the claimed timestamp (0: none claimed).
-- Status: 0 go, 1 full, 2 throttled, 3 cancelled, 4 too late.
--#include claim_timestamp
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if redis.call('HEXISTS', KEYS[4], 'cancelled') == 1 then return {3, 0} end
local max_in_flight = tonumber(ARGV[4])
if max_in_flight > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max_in_flight then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {1, math.floor(math.max(tonumber(first[2]) - now, 0))}
  end
end
local at = now
local slot = redis.call('GET', KEYS[6])
local limits = {}
if slot then
  at = math.max(tonumber(slot), now)
else
  local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
  if tonumber(redis.call('GET', KEYS[2]) or '0') > now then
    interval, burst = math.max(interval, tonumber(ARGV[3])), 1
  end
  if interval > 0 then limits[#limits + 1] = {KEYS[1], interval, burst} end
  local rate = tonumber(redis.call('HGET', KEYS[4], 'rate') or '0')
  if rate > 0 then limits[#limits + 1] = {KEYS[5], 1000000 / rate, tonumber(ARGV[2])} end
  for _, limit in ipairs(limits) do
    local tat = math.max(tonumber(redis.call('GET', limit[1]) or '0'), now)
    at = math.max(at, tat - (limit[3] - 1) * limit[2])
  end
end
local latest = tonumber(ARGV[8])
if latest > 0 and at > latest then return {4, math.floor(at - now)} end
for _, limit in ipairs(limits) do
  local tat = math.max(tonumber(redis.call('GET', limit[1]) or '0'), at) + limit[2]
  local ttl = math.ceil((tat - now) / 1000) + 1000
  redis.call('SET', limit[1], string.format('%.0f', tat), 'PX', ttl)
end
if at - now > tonumber(ARGV[7]) then
  if not slot then
    redis.call('SET', KEYS[6], string.format('%.0f', at), 'PX', tonumber(ARGV[9]))
  end
  return {2, math.floor(at - now)}
end
if slot then redis.call('DEL', KEYS[6]) end
if max_in_flight > 0 then
  local lapse = at + tonumber(ARGV[6])
  redis.call('ZADD', KEYS[3], string.format('%.0f', lapse), ARGV[5])
  redis.call('PEXPIRE', KEYS[3], math.ceil((lapse - now) / 1000) + 1000)
end
-- A go that must wait claims no timestamp: the caller claims after its wait, right before
-- it sends, so that a claim is never older than its send nor overtaken by a later one.
local wait = math.floor(at - now)
local claimed = 0
if KEYS[7] and wait == 0 then
  claimed = claim_timestamp(KEYS[7], tonumber(ARGV[10]), tonumber(ARGV[11]))
end
return {0, wait, claimed}
