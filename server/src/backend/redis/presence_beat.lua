-- The presence heartbeat of one instance in one chat: renews its leases, then removes
-- expired entries of any instance and reports the users that thereby went offline, so
-- that exactly one instance announces their leave.
--
-- A stall of Redis longer than a lease lets every lease run out while everyone stays
-- connected. So the chat keeps the time of the last beat of any instance (its beat
-- clock): a beat that finds none for half a lease or more was held up with the others,
-- and nobody removes anything for one lease after it, by when every live instance has
-- renewed its leases. A lease that had to be written back while its user had no entry
-- left (another instance did remove it and announced the leave, or Redis lost it) is
-- reported too, so that this instance announces the user's presence_join again.
--
-- KEYS[1] presence (zset)   KEYS[2] presence names (hash)   KEYS[3] beat clock (hash)
-- ARGV[1] lease (ms), then triples: member, user, username
-- Returns {gone, back}, each {user, username, ...}: the users whose last entry expired,
-- and those whose entry this beat wrote back.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local function user_of(member)
  return string.sub(member, string.find(member, ':', 1, true) + 1)
end

local last = tonumber(redis.call('HGET', KEYS[3], 'last') or '')
local hold = tonumber(redis.call('HGET', KEYS[3], 'hold') or '') or 0
if not last or now - last >= lease / 2 then
  hold = math.max(hold, now + lease)
end
redis.call('HSET', KEYS[3], 'last', now, 'hold', hold)
redis.call('PEXPIRE', KEYS[3], lease * 3)

local present = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  present[user_of(member)] = true
end
local back = {}
for i = 2, #ARGV, 3 do
  if not present[ARGV[i + 1]] then
    back[#back + 1] = ARGV[i + 1]
    back[#back + 1] = ARGV[i + 2]
  end
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
end

local gone = {}
if now >= hold then
  local expired = {}
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
    if redis.call('ZREM', KEYS[1], member) == 1 then
      expired[#expired + 1] = user_of(member)
    end
  end
  local live = {}
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
    live[user_of(member)] = true
  end
  local reported = {}
  for _, user in ipairs(expired) do
    if not live[user] and not reported[user] then
      reported[user] = true
      gone[#gone + 1] = user
      gone[#gone + 1] = redis.call('HGET', KEYS[2], user) or user
      redis.call('HDEL', KEYS[2], user)
    end
  end
end
return {gone, back}
