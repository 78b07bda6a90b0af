-- RECALL_KEY: what the shared snapshot says about one key id, and how long ago Postgres said it.
--
-- KEYS[1]  the key id's record        auth:v1:{keys}:snapshot:<key id>
-- KEYS[2]  the ids Postgres did not know (see remember_key.lua)
--
-- ARGV[1]  key id
-- ARGV[2]  the record's TTL, ms, as REMEMBER_KEY sets it
-- ARGV[3]  an unknown id's TTL, ms
--
-- Returns {1, age ms, record JSON} for a known key, {0, age ms} for an id Postgres did not
-- know, {} when the snapshot says nothing (never stored, expired, or deleted by a change).

local record = redis.call('GET', KEYS[1])
if record then
  local left = redis.call('PTTL', KEYS[1])
  return {1, math.max(0, tonumber(ARGV[2]) - left), record}
end

local learned = redis.call('ZSCORE', KEYS[2], ARGV[1])
if learned then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local age = now - tonumber(learned)
  if age < tonumber(ARGV[3]) then return {0, math.max(0, age)} end
end
return {}
