-- SETTLE: apply a request's real token count to what ADMIT reserved, exactly once per lease.
-- The lease record is the once-only token: found, it is applied and deleted in this same
-- script; missing (already settled, or expired), nothing happens and nothing is counted.
-- Refunds move GCRA buckets back toward full (never beyond) and lower the period's quota
-- counter; an overage pushes them forward (debt). In-flight slots are released. Usage is
-- counted in the per-tenant buffer, per key and UTC minute, only when the record was found.
--
-- KEYS[1]    lease record hash  rl:v1:{t:<tenant>}:lease:<lease id>
-- KEYS[2]    usage buffer hash  rlbuf:v1:{t:<tenant>}:usage
-- KEYS[2+i]  the state key of limit i, exactly as passed to ADMIT
--
-- ARGV[1]  lease id
-- ARGV[2]  prompt tokens (>= 0)
-- ARGV[3]  completion tokens (>= 0)
-- ARGV[4]  usage field prefix, "<api key pk>|" ("" = count nothing)
-- ARGV[5]  usage buffer TTL, ms (the flusher must run more often than this)
--
-- Returns {settled (1|0), actual - reserved tokens (0 when not settled), now us}

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local function int(x) return string.format('%d', x) end

local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then return {0, 0, now} end
local record = {}
for j = 1, #flat, 2 do record[flat[j]] = flat[j + 1] end

local prompt, completion = tonumber(ARGV[2]), tonumber(ARGV[3])
local actual = prompt + completion

for i = 1, tonumber(record.n) do
  local s = tostring(i)
  local kind, key = record['k' .. s], KEYS[2 + i]
  local delta = actual - tonumber(record['c' .. s])
  if kind == 't' and delta ~= 0 then
    local T = tonumber(record['x' .. s])
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local new_tat = tat + delta * T
    -- A bucket is never fuller than full: a refund past now just empties the state.
    if new_tat <= now then
      redis.call('DEL', key)
    else
      -- 1 ms past the TAT, as ADMIT does: the key may outlive its meaning, never the reverse.
      redis.call('SET', key, int(new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
    end
  elseif (kind == 'd' or kind == 'm') and delta ~= 0 then
    local stored = redis.call('HMGET', key, 'p', 'u')
    -- Only the period that was charged is corrected; once it has rolled over it is history.
    -- The counter exists (with its TTL) whenever its period matches, so HSET keeps that TTL.
    if tonumber(stored[1]) == tonumber(record['x' .. s]) then
      redis.call('HSET', key, 'u', int(math.max((tonumber(stored[2]) or 0) + delta, 0)))
    end
  elseif kind == 'c' then
    redis.call('ZREM', key, ARGV[1])
  end
end

redis.call('DEL', KEYS[1])

if ARGV[4] ~= '' then
  local field = ARGV[4] .. int(math.floor(now / 60000000) * 60) .. '|'
  redis.call('HINCRBY', KEYS[2], field .. 'r', 1)
  redis.call('HINCRBY', KEYS[2], field .. 'p', int(prompt))
  redis.call('HINCRBY', KEYS[2], field .. 'c', int(completion))
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end

return {1, actual - tonumber(record.r), now}
