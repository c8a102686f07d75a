-- Removes a member and, if it was one, tells every instance (its sockets close with 4403).
--
-- KEYS[1] members (set)   ARGV[1] user   ARGV[2] channel   ARGV[3] the MemberRemoved event
-- Returns 1 if the user was a member.
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
