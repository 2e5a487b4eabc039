-- Only the enqueue that claimed a job id may release it, and the pending entry it recorded.
-- KEYS[1]  the job's claim key    KEYS[2]  the pending jobs    KEYS[3]  their task arguments
-- ARGV[1]  the claim's value      ARGV[2]  the job id
-- Reply: 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return 0
