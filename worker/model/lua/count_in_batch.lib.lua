-- Fragment (included by name): count a job's new final result in its batch, and on the last
-- one publish and log the batch summary. Called by publish_final.lua with named arguments.
-- count_in_batch(batch_key, log_key, channel, log_maxlen, outcome, finished_at, batch_id,
--                summary_fields_json, outcomes_json)
-- The summary is written field by field in the order the JSON lists give, so
-- ``BatchSummary`` stays its schema.
local function count_in_batch(batch_key, log_key, channel, log_maxlen, outcome, finished_at,
                              batch_id, summary_fields_json, outcomes_json)
  if batch_id == '' or redis.call('EXISTS', batch_key) == 0 then return end
  redis.call('HINCRBY', batch_key, 'outcome:' .. outcome, 1)
  local done = redis.call('HINCRBY', batch_key, 'done', 1)
  local total = tonumber(redis.call('HGET', batch_key, 'total') or '-1')
  if done ~= total then return end
  local counts = {}
  for _, name in ipairs(cjson.decode(outcomes_json)) do
    local n = tonumber(redis.call('HGET', batch_key, 'outcome:' .. name) or '0')
    counts[#counts + 1] = cjson.encode(name) .. ':' .. n
  end
  local values = {
    type = cjson.encode('batch'),
    batch_id = cjson.encode(batch_id),
    total = tostring(total),
    counts = '{' .. table.concat(counts, ',') .. '}',
    started_at = cjson.encode(redis.call('HGET', batch_key, 'started_at') or ''),
    finished_at = cjson.encode(finished_at),
  }
  local parts = {}
  for _, name in ipairs(cjson.decode(summary_fields_json)) do
    parts[#parts + 1] = cjson.encode(name) .. ':' .. values[name]
  end
  local summary = '{' .. table.concat(parts, ',') .. '}'
  redis.call('HSET', batch_key, 'finished_at', finished_at, 'summary', summary)
  redis.call('PUBLISH', channel, summary)
  redis.call('XADD', log_key, 'MAXLEN', '~', log_maxlen, '*', 'result', summary)
end
