-- SETTLE: apply a request's real token count to what ADMIT reserved, exactly once per lease.
-- The lease record is the once-only token: found, it is applied and deleted in this same
-- script; missing (already settled, or expired), nothing happens and nothing is counted.
-- Refunds move GCRA buckets back toward full (never beyond) and lower the period's quota
-- counter; an overage pushes them forward (debt). In-flight slots are released. Usage is
-- counted in the per-tenant buffer, per key and UTC minute, only when the record was found.
--
-- KEYS[1]    lease record       rl:v1:{t:<tenant>}:lease:<lease id>
--            (a string ADMIT wrote: "reserve;kind cost x;..." per limit, in KEYS order)
-- KEYS[2]    usage buffer hash  rlbuf:v1:{t:<tenant>}:usage
-- KEYS[2+i]  the state key of limit i, exactly as passed to ADMIT
-- KEYS[#KEYS] the dirty-buffer index (see admit.lua): counting usage adds KEYS[2] to it
--
-- ARGV[1]  lease id
-- ARGV[2]  prompt tokens (>= 0)
-- ARGV[3]  completion tokens (>= 0)
-- ARGV[4]  usage field prefix, "<api key pk>|" ("" = count nothing)
-- ARGV[5]  usage buffer TTL, ms (the flusher must run more often than this)
-- ARGV[6]  the adapter the request decoded with ("" or absent: none); counted too, in fields
--          "<api key pk>|<minute>|<r/p/c>|<adapter>" beside the key's own (AdapterUsageDay)
--
-- Returns {settled (1|0), actual - reserved tokens (0 when not settled), now us}

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local function int(x) return string.format('%d', x) end

local record = redis.call('GET', KEYS[1])
if not record then return {0, 0, now} end
local reserve
local items = {}
for part in string.gmatch(record, '[^;]+') do
  if not reserve then
    reserve = tonumber(part)
  else
    local kind, cost, x = string.match(part, '(%a) (%d+) (%d+)')
    items[#items + 1] = {kind, tonumber(cost), tonumber(x)}
  end
end

local prompt, completion = tonumber(ARGV[2]), tonumber(ARGV[3])
local actual = prompt + completion

for i = 1, #items do
  local kind, cost, x = items[i][1], items[i][2], items[i][3]
  local key = KEYS[2 + i]
  local delta = actual - cost
  if kind == 't' and delta ~= 0 then
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local new_tat = tat + delta * x
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
    if tonumber(stored[1]) == x then
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
  local adapter = ARGV[6] or ''
  if adapter ~= '' then
    redis.call('HINCRBY', KEYS[2], field .. 'r|' .. adapter, 1)
    redis.call('HINCRBY', KEYS[2], field .. 'p|' .. adapter, int(prompt))
    redis.call('HINCRBY', KEYS[2], field .. 'c|' .. adapter, int(completion))
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  local index = KEYS[#KEYS]
  redis.call('SADD', index, KEYS[2])
  if redis.call('PTTL', index) < tonumber(ARGV[5]) then redis.call('PEXPIRE', index, ARGV[5]) end
end

return {1, actual - reserve, now}
