-- Store, publish and log a job's one final result (worker.store.jobs.JobState.publish_final).
-- The batch count runs in the branch a new result takes: a redelivered job that had already
-- ended is neither published nor counted again. Whichever result wins, the job is no longer
-- pending.
-- KEYS[1]  the job's result key          KEYS[4]  the job's attempts list
-- KEYS[2]  the results log (stream)      KEYS[5]  the pending jobs (sorted set)
-- KEYS[3]  the batch hash                KEYS[6]  the pending jobs' task arguments (hash)
-- ARGV[1]  the result (JSON)             ARGV[6]  its finished_at
-- ARGV[2]  the results channel           ARGV[7]  its batch id ('' for none)
-- ARGV[3]  the result's lifetime (s)     ARGV[8]  the batch summary's field names (JSON)
-- ARGV[4]  the log's length              ARGV[9]  the outcome names (JSON)
-- ARGV[5]  the job's outcome             ARGV[10] the job id
-- Reply: 1 if this result was new, 0 if the job had one already.
--#include count_in_batch
redis.call('ZREM', KEYS[5], ARGV[10])
redis.call('HDEL', KEYS[6], ARGV[10])
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[3])) then
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[4]), '*', 'result', ARGV[1])
  count_in_batch(KEYS[3], KEYS[2], ARGV[2], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7],
                 ARGV[8], ARGV[9])
  redis.call('DEL', KEYS[4])
  return 1
end
return 0
