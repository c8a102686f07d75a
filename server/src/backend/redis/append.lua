-- Appends one message to a chat in one atomic step: membership check, idempotency check,
-- next seq, the capped stream, the idempotency entry and the PUBLISH to the chat's
-- channel. Every key is one chat's (one hash tag, one Cluster slot); the channel is not a
-- key.
--
-- KEYS[1] meta (hash; the chat exists iff it exists)   KEYS[2] epoch (string)
-- KEYS[3] seq (string counter)   KEYS[4] messages (stream, entry id = "{seq}-0")
-- KEYS[5] members (set)   KEYS[6] idempotency (zset: member = JSON [user, client_id],
-- score = the seq stored under it; only entries of retained messages)
-- ARGV[1] a fresh epoch, used if the chat has none     ARGV[2] the message JSON template
-- ARGV[3] stream MAXLEN    ARGV[4] idempotency member ("" without a client_id)
-- ARGV[5] channel   ARGV[6] event prefix   ARGV[7] event suffix
-- ARGV[8] id needle   ARGV[9] seq needle   ARGV[10] the sender's user id
-- Returns {"missing"} | {"forbidden"} | {"duplicate", stored JSON} | {"stored", JSON}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
-- Checked here, with the append, so that a member removed by any means (the admin API,
-- or a direct SREM by the app) cannot store or publish anything once the SREM is done.
if redis.call('SISMEMBER', KEYS[5], ARGV[10]) == 0 then
  return {'forbidden'}
end
if ARGV[4] ~= '' then
  local at = redis.call('ZSCORE', KEYS[6], ARGV[4])
  if at then
    local seq = string.format('%d', tonumber(at))
    local entry = redis.call('XRANGE', KEYS[4], seq .. '-0', seq .. '-0')
    if entry[1] then
      return {'duplicate', entry[1][2][2]}
    end
    -- Not retained any more (the retention was lowered): stored afresh, as on the
    -- embedded backend; the ZADD below moves the entry to the new seq.
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  -- A new epoch is a new store: nothing left from an older one belongs to it.
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[6])
end
local epoch = redis.call('GET', KEYS[2])
local seq = redis.call('INCR', KEYS[3])
-- The stream's ids must grow; if someone reset the counter alone, continue after the stream.
local newest = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
if newest[1] then
  local newest_seq = tonumber(string.match(newest[1][1], '^(%d+)'))
  if newest_seq >= seq then
    seq = newest_seq + 1
    redis.call('SET', KEYS[3], seq)
  end
end
local seq_text = string.format('%d', seq)
local function splice(text, needle, value)
  local from, to = string.find(text, needle, 1, true)
  return string.sub(text, 1, from - 1) .. value .. string.sub(text, to + 1)
end
-- The id and seq come first in the template, so the first match is the top-level field.
local message = splice(ARGV[2], ARGV[8], '"id":"' .. epoch .. '-' .. seq_text .. '"')
message = splice(message, ARGV[9], '"seq":' .. seq_text)
redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[3], seq_text .. '-0', 'm', message)
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[6], seq, ARGV[4])
end
-- The idempotency window is the retained history: entries of messages the MAXLEN just
-- trimmed go with them, so a flood of distinct client_ids costs at most the retention.
local oldest = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
if oldest[1] then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. string.match(oldest[1][1], '^(%d+)'))
end
redis.call('PUBLISH', ARGV[5], ARGV[6] .. message .. ARGV[7])
return {'stored', message}
