-- The cluster's rate limit, one attempt's turn (worker.store.limiter.ClusterLimiter).
-- Times are integer microseconds from Redis's own clock, so workers' clocks do not matter.
-- KEYS[1]  the cluster TAT (every lane)         KEYS[6]  the job's slot
-- KEYS[2]  busy-until (bulk, after an API 1000) KEYS[7]  the urgent lane's TAT
-- KEYS[3]  the in-flight leases (sorted set)    KEYS[8]  busy-until (urgent too)
-- KEYS[4]  the batch hash                       KEYS[9]  the bulk shift
-- KEYS[5]  the batch's TAT                      KEYS[10] urgent attempts waiting for an
--                                                        in-flight slot (sorted set)
--                                               KEYS[11] optional: the target's timestamp key
--                                                        (worker.api.clock), claimed on a go
-- ARGV[1]  cluster interval                   ARGV[8]  latest send time (0: none)
-- ARGV[2]  burst                              ARGV[9]  slot key lifetime (ms)
-- ARGV[3]  busy interval                      ARGV[10] local time (s) to claim a timestamp from
-- ARGV[4]  max in flight (0: none)            ARGV[11] the timestamp key's lifetime (s)
-- ARGV[5]  lease id                           ARGV[12] the lane: 'urgent' or 'bulk'
-- ARGV[6]  lease length                       ARGV[13] the bulk lane's interval (the cluster
-- ARGV[7]  longest wait the caller will sleep          interval over 1 - STREAMCTL_URGENT_SHARE)
-- Reply: {status, wait in microseconds, claimed timestamp (0: none), 1 if the attempt goes
-- while bulk is slowed down by an API 1000 else 0}.
-- Status: 0 go, 1 full, 2 throttled, 3 cancelled, 4 too late.
--
-- Lanes. A bulk attempt reserves its send time on the cluster TAT (GCRA, as with one lane).
-- An urgent attempt reserves on the urgent lane's own TAT, so bulk reservations never delay
-- it, and every urgent reservation then moves the bulk lane back by one interval: the cluster
-- TAT (later bulk reservations) and the bulk shift, a running total of those moves. Every bulk
-- job that waits for a send time keeps it in its slot key as "<time>:<shift then>"; its send
-- time is <time> + (shift now - shift then): a reservation made before an urgent one moves
-- back by one interval per urgent reservation since, so none is sent early and none is lost,
-- and the order of bulk jobs is kept. A waiting job therefore asks again when its wait ends
-- (ClusterLimiter.before_send), and goes only once its moved-back time has come. The urgent
-- attempt took a slot the bulk lane gives up, so every lane together stays within the rate
-- plus burst; the urgent lane alone is bounded by its own TAT at the same rate and burst.
-- An API 1000 slows the bulk lane to the busy rate with no burst (KEYS[2]); a 1000 answered
-- to an attempt sent while bulk was already slowed slows the urgent lane too (KEYS[8]).
-- In flight: an urgent attempt that finds every slot taken marks itself waiting (KEYS[10], a
-- mark that lapses unless renewed by its next ask); a bulk attempt counts those marks as
-- taken slots, so the next slot freed goes to the urgent attempt.
--#include claim_timestamp
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if redis.call('HEXISTS', KEYS[4], 'cancelled') == 1 then return {3, 0, 0, 0} end
local urgent = ARGV[12] == 'urgent'
local max_in_flight = tonumber(ARGV[4])
if max_in_flight > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', now)
  local taken = redis.call('ZCARD', KEYS[3])
  if not urgent then taken = taken + redis.call('ZCARD', KEYS[10]) end
  if taken >= max_in_flight then
    if urgent then
      redis.call('ZADD', KEYS[10], now + 2000000, ARGV[5])
      redis.call('PEXPIRE', KEYS[10], 3000)
    end
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    local free_at = first[2] and tonumber(first[2]) or now + 100000
    return {1, math.floor(math.max(free_at - now, 0)), 0, 0}
  end
end
local interval, burst, busy_interval = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bulk_busy = tonumber(redis.call('GET', KEYS[2]) or '0') > now
local shift = tonumber(redis.call('GET', KEYS[9]) or '0')
local at = now
local slot = redis.call('GET', KEYS[6])
local limits = {}
-- How far an urgent reservation moves the bulk lane back: one interval, a busy one while
-- bulk is slowed down.
local push = 0
if slot then
  local slot_at, slot_shift = string.match(slot, '^(%d+):(%d+)$')
  if slot_at then
    at = tonumber(slot_at) + math.max(shift - tonumber(slot_shift), 0)
  else
    at = tonumber(slot)
  end
  at = math.max(at, now)
else
  local own, own_burst, key = tonumber(ARGV[13]), burst, KEYS[1]
  local busy = bulk_busy
  if urgent then
    own, key = interval, KEYS[7]
    busy = tonumber(redis.call('GET', KEYS[8]) or '0') > now
    push = interval
    if bulk_busy then push = math.max(interval, busy_interval) end
  end
  if busy then own, own_burst = math.max(own, busy_interval), 1 end
  if own > 0 then limits[#limits + 1] = {key, own, own_burst} end
  local rate = tonumber(redis.call('HGET', KEYS[4], 'rate') or '0')
  if rate > 0 then limits[#limits + 1] = {KEYS[5], 1000000 / rate, burst} end
  for _, limit in ipairs(limits) do
    local tat = math.max(tonumber(redis.call('GET', limit[1]) or '0'), now)
    at = math.max(at, tat - (limit[3] - 1) * limit[2])
  end
end
local latest = tonumber(ARGV[8])
if latest > 0 and at > latest then return {4, math.floor(at - now), 0, 0} end
for _, limit in ipairs(limits) do
  local tat = math.max(tonumber(redis.call('GET', limit[1]) or '0'), at) + limit[2]
  local ttl = math.ceil((tat - now) / 1000) + 1000
  redis.call('SET', limit[1], string.format('%.0f', tat), 'PX', ttl)
end
if push > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + push
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  -- Kept a day past the last move: longer than any slot key lives.
  redis.call('SET', KEYS[9], string.format('%.0f', shift + push), 'PX', 86400000)
end
local wait = math.floor(at - now)
if wait > 0 then
  -- The reserved time, kept for the job: it asks again when its wait ends (or when it comes
  -- back from the broker), and goes then, not before; a bulk job's moves back with urgent ones.
  if not slot then
    local kept = string.format('%.0f', at)
    if not urgent then kept = kept .. ':' .. string.format('%.0f', shift) end
    redis.call('SET', KEYS[6], kept, 'PX', tonumber(ARGV[9]))
  end
  if wait > tonumber(ARGV[7]) then return {2, wait, 0, 0} end
  return {0, wait, 0, 0}
end
if slot then redis.call('DEL', KEYS[6]) end
if max_in_flight > 0 then
  if urgent then redis.call('ZREM', KEYS[10], ARGV[5]) end
  local lapse = now + tonumber(ARGV[6])
  redis.call('ZADD', KEYS[3], string.format('%.0f', lapse), ARGV[5])
  redis.call('PEXPIRE', KEYS[3], math.ceil((lapse - now) / 1000) + 1000)
end
local claimed = 0
if KEYS[11] then
  claimed = claim_timestamp(KEYS[11], tonumber(ARGV[10]), tonumber(ARGV[11]))
end
local slowed = 0
if bulk_busy then slowed = 1 end
return {0, 0, claimed, slowed}
