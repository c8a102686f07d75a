-- Takes one of a user's connection slots if they hold fewer than the limit, on every
-- instance together. The slots are a sorted set of "{instance}:{slot}" scored by lease
-- expiry (ms, Redis clock), renewed by their instance's heartbeat, so that a crashed
-- instance's slots run out with their lease. Atomic: two instances admitting the same
-- user at once cannot both take the last slot.
--
-- KEYS[1] the user's slots (zset)
-- ARGV[1] member "{instance}:{slot}"   ARGV[2] limit   ARGV[3] lease (ms)
-- Returns 1 if the slot was taken, 0 at the limit.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
-- The set lives as long as its longest lease.
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], newest[2])
return 1
