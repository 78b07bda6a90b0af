-- HEARTBEAT: keep a long request's in-flight leases alive by moving their expiry to now + TTL.
-- A lease that is gone or already expired is never re-added: its slot may be someone else's.
--
-- KEYS[1]    lease record       rl:v1:{t:<tenant>}:lease:<lease id> (see settle.lua)
-- KEYS[1+i]  the state key of limit i, exactly as passed to ADMIT
--
-- ARGV[1]  lease id
-- ARGV[2]  lease TTL, ms
-- ARGV[3]  lease record TTL, ms (>= ARGV[2])
--
-- Returns {alive (1|0), now us}: 0 when the record is gone (settled or expired) or any lease
-- of it was lost.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local record = redis.call('GET', KEYS[1])
if not record then return {0, now} end

local alive = 1
local expires = now + tonumber(ARGV[2]) * 1000
local i = 0
for kind in string.gmatch(record, ';(%a)') do
  i = i + 1
  if kind == 'c' then
    local key = KEYS[1 + i]
    local score = tonumber(redis.call('ZSCORE', key, ARGV[1]))
    if score and score > now then
      redis.call('ZADD', key, 'XX', string.format('%d', expires), ARGV[1])
      -- The set outlives its longest lease (the same margin as ADMIT gives it).
      local set_ttl = tonumber(ARGV[2]) + 1000
      if redis.call('PTTL', key) < set_ttl then redis.call('PEXPIRE', key, set_ttl) end
    else
      alive = 0
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {alive, now}
