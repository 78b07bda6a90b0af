-- REMEMBER_KEY: store what Postgres just said about one key id in the shared snapshot, unless a
-- key change was announced since the loader's query began. Then the snapshot can never bring
-- back a state older than the change: a load that read the row before the change either writes
-- here before the announcement (which deletes the snapshot: see tenants/keycache.bump_version)
-- or finds the version moved and writes nothing.
--
-- KEYS[1]  the version counter        auth:v1:{keys}:version (all three share one hash slot)
-- KEYS[2]  the key id's record        auth:v1:{keys}:snapshot:<key id>
-- KEYS[3]  the ids Postgres did not know, a sorted set scored by when (ms, Redis clock)
--                                     auth:v1:{keys}:snapshot-unknown
--
-- ARGV[1]  the version the loader held before its query ("" when there was none)
-- ARGV[2]  key id
-- ARGV[3]  the record, as JSON (peppered hashes only, never a secret); "" when Postgres did not
--          know the id
-- ARGV[4]  the record's TTL, ms (how long a process may serve a record stale)
-- ARGV[5]  an unknown id's TTL, ms (the same for an "unknown" mark)
-- ARGV[6]  the most unknown ids kept (the newest win)
--
-- Returns 1 when stored, 0 when a change made the load too old to store.

local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end

if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[2])
  return 1
end

-- A deleted row is now as unknown as a made-up id.
redis.call('DEL', KEYS[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[5])
redis.call('ZADD', KEYS[3], string.format('%d', now), ARGV[2])
-- Anyone can make up ids: the set is trimmed on every write, by age and then by size, so no
-- flood of them grows it past ARGV[6] members.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('(%d', now - ttl))
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[6]) + 1))
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
