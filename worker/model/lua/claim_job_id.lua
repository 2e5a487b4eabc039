-- Claim a job id for one enqueue, or say what holds it (worker.store.jobs.claim_job_id).
-- A job id is taken when it has a claim (a close's), a final result, or a pending entry of a
-- batch (a batch's jobs have no claim). A close's pending entry left without its claim (an
-- enqueue that failed with Redis unreachable, its claim expired since) does not hold the id.
-- KEYS[1]  the job's claim key ("enqueued")
-- KEYS[2]  the job's result key
-- KEYS[3]  the pending jobs' task arguments (hash)
-- ARGV[1]  the claim's value           ARGV[2]  its lifetime (s)      ARGV[3]  the job id
-- Reply: {'claim' | 'result' | 'pending', what holds it} or {'claimed', ARGV[1]}.
local held = redis.call('GET', KEYS[1])
if held then return {'claim', held} end
local result = redis.call('GET', KEYS[2])
if result then return {'result', result} end
local pending = redis.call('HGET', KEYS[3], ARGV[3])
if pending and cjson.decode(pending)['batch_id'] then return {'pending', pending} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return {'claimed', ARGV[1]}
