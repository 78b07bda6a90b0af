-- COUNT_ERROR: one request of a key answered with an error other than 429 (a 4xx, a 500, a
-- 503), counted in the tenant's usage buffer beside SETTLE's counters: field
-- "<api key pk>|<UTC minute, epoch s>|e". The flusher moves the buffer to UsageMinute.errors
-- with the rest of the usage (RENAME, then one transaction per batch), so each error lands in
-- exactly one batch: this script runs either before the RENAME or after it, never across it.
--
-- KEYS[1]  usage buffer hash  rlbuf:v1:{t:<tenant>}:usage
-- KEYS[2]  the dirty-buffer index (see admit.lua): KEYS[1] is added to it
--
-- ARGV[1]  usage field prefix, "<api key pk>|"
-- ARGV[2]  usage buffer TTL, ms (the flusher must run more often than this)
--
-- Returns the minute's error count in this buffer so far.

local time = redis.call('TIME')
local minute = math.floor(tonumber(time[1]) / 60) * 60
local field = ARGV[1] .. string.format('%d', minute) .. '|e'
local count = redis.call('HINCRBY', KEYS[1], field, 1)
-- Every buffer key has a TTL, as SETTLE gives it: a node with no flusher leaks nothing.
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return count
