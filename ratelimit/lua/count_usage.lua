-- COUNT_USAGE: the usage of one request that has no lease in Redis to settle (admitted by the
-- fallback while Redis could not answer: failure modes open and local), counted in the tenant's
-- usage buffer with the very fields SETTLE writes: "<api key pk>|<UTC minute, epoch s>|r/p/c".
-- The flusher moves it to UsageMinute with the rest (RENAME, then one transaction per batch),
-- exactly once, whichever process flushes: the count outlives the process that made it.
-- Not idempotent (there is no lease to spend): the caller runs it once and never retries it.
--
-- KEYS[1]  usage buffer hash  rlbuf:v1:{t:<tenant>}:usage
-- KEYS[2]  the dirty-buffer index (see admit.lua): KEYS[1] is added to it
--
-- ARGV[1]  usage field prefix, "<api key pk>|"
-- ARGV[2]  prompt tokens (>= 0)
-- ARGV[3]  completion tokens (>= 0)
-- ARGV[4]  usage buffer TTL, ms (the flusher must run more often than this)
-- ARGV[5]  the adapter the request decoded with ("" or absent: none): counted as SETTLE does
--
-- Returns the minute's request count in this buffer so far.

local time = redis.call('TIME')
local minute = math.floor(tonumber(time[1]) / 60) * 60
local field = ARGV[1] .. string.format('%d', minute) .. '|'
local requests = redis.call('HINCRBY', KEYS[1], field .. 'r', 1)
redis.call('HINCRBY', KEYS[1], field .. 'p', string.format('%d', tonumber(ARGV[2])))
redis.call('HINCRBY', KEYS[1], field .. 'c', string.format('%d', tonumber(ARGV[3])))
local adapter = ARGV[5] or ''
if adapter ~= '' then
  redis.call('HINCRBY', KEYS[1], field .. 'r|' .. adapter, 1)
  redis.call('HINCRBY', KEYS[1], field .. 'p|' .. adapter, string.format('%d', tonumber(ARGV[2])))
  redis.call('HINCRBY', KEYS[1], field .. 'c|' .. adapter, string.format('%d', tonumber(ARGV[3])))
end
-- Every buffer key has a TTL, as SETTLE gives it: a node with no flusher leaks nothing.
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
return requests
