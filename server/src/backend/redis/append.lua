-- Appends one message to a chat in one atomic step: membership check, idempotency check,
-- next seq, the capped stream, the idempotency key and the PUBLISH to the chat's channel.
-- Every key is one chat's (one hash tag, one Cluster slot); the channel is not a key.
--
-- KEYS[1] meta (hash; the chat exists iff it exists)   KEYS[2] epoch (string)
-- KEYS[3] seq (string counter)   KEYS[4] messages (stream, entry id = "{seq}-0")
-- KEYS[5] members (set)
-- KEYS[6] idempotency key (string "{epoch} {seq} {created_at}", optional)
-- ARGV[1] a fresh epoch, used if the chat has none     ARGV[2] the message JSON template
-- ARGV[3] stream MAXLEN    ARGV[4] idempotency TTL (s)   ARGV[5] channel
-- ARGV[6] event prefix     ARGV[7] event suffix           ARGV[8] id needle   ARGV[9] seq needle
-- ARGV[10] the template's created_at   ARGV[11] the sender's user id
-- Returns {"missing"} | {"forbidden"} | {"duplicate", stored JSON} | {"stored", JSON}
--       | {"trimmed", epoch, seq, created_at}: a duplicate whose message left the stream.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
-- Checked here, with the append, so that a member removed by any means (the admin API,
-- or a direct SREM by the app) cannot store or publish anything once the SREM is done.
if redis.call('SISMEMBER', KEYS[5], ARGV[11]) == 0 then
  return {'forbidden'}
end
if KEYS[6] then
  local stored = redis.call('GET', KEYS[6])
  if stored and string.sub(stored, 1, 1) == '{' then
    -- Written before keys held only the seq; they expire within the TTL.
    return {'duplicate', stored}
  end
  if stored then
    -- The key holds only where the message is, not the message (up to a frame for each
    -- message for the whole TTL): read it back from the stream while it is retained.
    local key_epoch, key_seq, key_at = string.match(stored, '^(%S+) (%d+) (%S+)$')
    if key_epoch and key_epoch == redis.call('GET', KEYS[2]) then
      local entry = redis.call('XRANGE', KEYS[4], key_seq .. '-0', key_seq .. '-0')
      if entry[1] then
        return {'duplicate', entry[1][2][2]}
      end
      -- Trimmed out of the stream, but stored: never store it twice.
      return {'trimmed', key_epoch, key_seq, key_at}
    end
    -- A key of an older epoch points into a store that is gone: store afresh.
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  -- A new epoch is a new store: nothing left from an older one belongs to it.
  redis.call('DEL', KEYS[3], KEYS[4])
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
if KEYS[6] then
  redis.call('SET', KEYS[6], epoch .. ' ' .. seq_text .. ' ' .. ARGV[10], 'EX', ARGV[4])
end
redis.call('PUBLISH', ARGV[5], ARGV[6] .. message .. ARGV[7])
return {'stored', message}
