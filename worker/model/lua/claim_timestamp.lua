-- The next request timestamp of one target (worker.api.clock).
-- KEYS[1]  the target's timestamp key (keys.timestamp_key)
-- ARGV[1]  now, in whole seconds
-- ARGV[2]  the key's lifetime in seconds
-- Reply: the claimed timestamp.
--#include claim_timestamp
return claim_timestamp(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
