-- Reads a consistent snapshot of a chat's log: its epoch (made if it has none), newest
-- seq, oldest retained seq, and the messages from a given seq on.
--
-- KEYS[1] meta   KEYS[2] epoch   KEYS[3] seq   KEYS[4] messages
-- ARGV[1] a fresh epoch, used if the chat has none
-- ARGV[2] first seq wanted ("" for none)   ARGV[3] most messages to return
-- Returns {"missing"} | {"ok", epoch, newest seq, oldest retained seq or "", JSON...}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  redis.call('DEL', KEYS[3], KEYS[4])
end
local result = {'ok', redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3]) or '0'}
if ARGV[2] == '' then
  return result
end
local oldest = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
if oldest[1] then
  result[4] = string.match(oldest[1][1], '^(%d+)')
else
  result[4] = ''
end
local entries = redis.call('XRANGE', KEYS[4], ARGV[2], '+', 'COUNT', ARGV[3])
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'm' then
      result[#result + 1] = fields[i + 1]
    end
  end
end
return result
