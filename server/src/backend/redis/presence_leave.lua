-- Removes one instance's presence entry of a user in a chat.
--
-- The user stays online while any other entry of theirs is left, expired or not (see
-- presence_join.lua): the heartbeat that takes an expired one out announces the leave.
--
-- KEYS[1] presence (zset)   KEYS[2] presence names (hash)
-- ARGV[1] member "{instance}:{user}"   ARGV[2] user
-- Returns 1 if the user has no entry left on any instance, else 0.
redis.call('ZREM', KEYS[1], ARGV[1])
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(member, string.find(member, ':', 1, true) + 1) == ARGV[2] then
    return 0
  end
end
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
