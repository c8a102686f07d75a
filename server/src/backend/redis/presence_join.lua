-- Counts one instance's connections of a user in a chat as online, with a lease.
-- Presence is a sorted set of "{instance}:{user_id}" scored by lease expiry (ms, Redis
-- clock), so a crashed instance's users fall out when their lease runs out.
--
-- A user is online while any entry of theirs is in the set, expired or not: an expired
-- entry is only taken out by a heartbeat, which then announces the leave. Until then its
-- user may well be connected (a Redis stall lets every lease run out; their instance
-- renews it on its next beat), and nobody has been told otherwise.
--
-- KEYS[1] presence (zset)   KEYS[2] presence names (hash user -> username)
-- ARGV[1] member "{instance}:{user}"   ARGV[2] user   ARGV[3] username   ARGV[4] lease (ms)
-- Returns {first (1|0), user, username, user, username, ...} of everyone online.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = 1
local users = {}
local seen = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local user = string.sub(member, string.find(member, ':', 1, true) + 1)
  if user == ARGV[2] then
    first = 0
  end
  if not seen[user] then
    seen[user] = true
    users[#users + 1] = user
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if not seen[ARGV[2]] then
  users[#users + 1] = ARGV[2]
end
local result = {first}
for _, user in ipairs(users) do
  result[#result + 1] = user
  result[#result + 1] = redis.call('HGET', KEYS[2], user) or user
end
return result
