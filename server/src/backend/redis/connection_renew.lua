-- Renews one instance's connection slots of a user for another lease, writing back any
-- that Redis lost, so that they keep counting against the user's limit.
--
-- KEYS[1] the user's slots (zset)
-- ARGV[1] lease (ms), then the members "{instance}:{slot}"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
-- The set lives as long as its longest lease.
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], newest[2])
return 1
