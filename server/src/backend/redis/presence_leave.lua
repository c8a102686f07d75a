-- Removes one instance's presence entry of a user in a chat.
--
-- KEYS[1] presence (zset)   KEYS[2] presence names (hash)
-- ARGV[1] member "{instance}:{user}"   ARGV[2] user
-- Returns 1 if the user has no live entry left on any instance, else 0.
redis.call('ZREM', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  if string.sub(member, string.find(member, ':', 1, true) + 1) == ARGV[2] then
    return 0
  end
end
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
