-- The presence heartbeat of one instance in one chat: renews its leases (re-adding them
-- if Redis lost them), then removes expired entries of any instance and reports the
-- users that thereby went offline, so that exactly one instance announces their leave.
--
-- KEYS[1] presence (zset)   KEYS[2] presence names (hash)
-- ARGV[1] lease (ms), then triples: member, user, username
-- Returns {user, username, ...} of users whose last entry expired.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
end
local gone = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    gone[#gone + 1] = string.sub(member, string.find(member, ':', 1, true) + 1)
  end
end
local live = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  live[string.sub(member, string.find(member, ':', 1, true) + 1)] = true
end
local result = {}
local reported = {}
for _, user in ipairs(gone) do
  if not live[user] and not reported[user] then
    reported[user] = true
    result[#result + 1] = user
    result[#result + 1] = redis.call('HGET', KEYS[2], user) or user
    redis.call('HDEL', KEYS[2], user)
  end
end
return result
