-- ADMIT: one all-or-nothing admission of a request over every limit it is subject to
-- (requests and tokens per minute, tokens per UTC day and month, in-flight leases), for the key
-- and its tenant together. Nothing is written unless every limit allows; a denial only counts
-- the 429 in the audit buffer (KEYS[2], outside the rl:* limiter state).
-- Time comes only from Redis TIME, in integer microseconds (exact in a double up to 2^53).
-- Arguments and reply are packed into few strings: redis-py spends far more time encoding
-- and decoding many small values than Redis spends running this script.
--
-- KEYS[1]    lease record       rl:v1:{t:<tenant>}:lease:<lease id>  (unused when ARGV[1] is "")
-- KEYS[2]    429 audit buffer   rlbuf:v1:{t:<tenant>}:throttle         (unused when ARGV[2] is "")
-- KEYS[2+i]  the state key of limit i, i = 1..n, in the order of the limits in ARGV[5]
-- KEYS[3+n]  the dirty-buffer index  rlbuf:v1:dirty[:{<slot tag>}]    (only when ARGV[2] is not "")
--            a set the flusher reads instead of scanning the keyspace: a denial adds KEYS[2]
--
-- ARGV[1]  lease id ("" = a pure check: no lease record, nothing to settle; login throttling)
-- ARGV[2]  audit field prefix, "<api key pk>|" ("" = no audit)
-- ARGV[3]  client address sampled into the audit row ("" = none)
-- ARGV[4]  six integers separated by spaces:
--          tokens to reserve (the caller clamped them by policy),
--          lease TTL ms (an in-flight slot whose holder never settles frees after this),
--          lease record TTL ms (how long SETTLE can still find the reservation, >= lease TTL),
--          most sample addresses kept per audit row, audit buffer TTL ms,
--          longest retry-after given for an in-flight denial, us
-- ARGV[5]  the limits, "kind limit burst name" each, separated by ";":
--          kind: "r" requests (GCRA, cost 1), "t" tokens (GCRA, cost = reservation),
--                "d" tokens per UTC day, "m" tokens per UTC month (calendar counters),
--                "c" requests in flight (lease sorted set scored by expiry)
--          limit: per minute, per period or concurrent; burst: GCRA bucket depth in units
--          (0 for other kinds); name: the audit reason, e.g. "key-rpm"
--
-- Returns one string of integers separated by spaces:
--   allowed (1|0), binding limit index (0 when allowed), retry after us, now us,
--   then for each limit i: remaining, reset us
-- remaining: units left after this decision (allowed) or now (denied); reset: us until the
-- limit is back to full (GCRA), until the period ends (quotas), or until the earliest lease
-- expires (in-flight).
-- The lease record (a string, "reserve;kind cost x;...", x the GCRA interval or the quota
-- period index) is what SETTLE and HEARTBEAT read back.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local MINUTE = 60000000
local DAY = 86400000000

-- Lua numbers are doubles: format integers explicitly so no value is written as 1.79e+15.
local function int(x) return string.format('%d', x) end
-- A TTL in ms for state that is stale after `us`. Redis expires keys by its own ms clock, which
-- may lag TIME a little inside a script; the margin makes a key outlive its meaning, never the
-- reverse (stale state is harmless: an old TAT counts as now, an old period as zero).
local function ms(us, margin)
  local v = math.ceil(us / 1000) + margin
  if v < 1 then v = 1 end
  return v
end

-- Days since 1970-01-01 to a proleptic Gregorian (year, month); H. Hinnant's civil_from_days.
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then year = year + 1 end
  return year, month
end

-- The first day of (year, month) as days since 1970-01-01; H. Hinnant's days_from_civil.
local function first_day(year, month)
  if month <= 2 then year = year - 1 end
  local era = math.floor(year / 400)
  local yoe = year - era * 400
  local mp = month > 2 and month - 3 or month + 9
  local doy = math.floor((153 * mp + 2) / 5)
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end

-- The UTC calendar period holding `now`: its index (stored with the counter) and its end, us.
local function period(kind)
  local day = math.floor(now / DAY)
  if kind == 'd' then return day, (day + 1) * DAY end
  local year, month = civil(day)
  local index = year * 12 + month - 1
  if month == 12 then year, month = year + 1, 1 else month = month + 1 end
  return index, first_day(year, month) * DAY
end

local numbers = {}
for v in string.gmatch(ARGV[4], '%S+') do numbers[#numbers + 1] = tonumber(v) end
local reserve, lease_ttl_ms, record_ttl_ms = numbers[1], numbers[2], numbers[3]
local sample_max, audit_ttl_ms, inflight_retry = numbers[4], numbers[5], numbers[6]
local lease_ttl = lease_ttl_ms * 1000

local specs = {}
for kind, limit, burst, name in string.gmatch(ARGV[5], '(%a) (%d+) (%d+) ([^;]+)') do
  specs[#specs + 1] = {kind, tonumber(limit), tonumber(burst), name}
end
local n = #specs
local plans = {}
local allowed, binding, retry, binding_is_quota = true, 0, 0, false

local function gcra(p, key, kind, limit, burst)
  local cost = 1
  if kind == 't' then cost = math.min(reserve, limit) end
  -- Emission interval rounded up to whole us: integer sums, never drifting toward more.
  local T = math.ceil(MINUTE / limit)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + cost * T
  -- An idle bucket takes any single reservation up to one minute's limit, even above the burst.
  local depth = math.max(burst, cost) * T
  p.cost, p.x, p.new_tat = cost, T, new_tat
  p.now_left, p.now_reset = math.floor((burst * T - (tat - now)) / T), tat - now
  p.left, p.reset = math.floor((burst * T - (new_tat - now)) / T), new_tat - now
  if new_tat - now <= depth then return true, 0 end
  return false, new_tat - depth - now
end

local function quota(p, key, kind, limit)
  local index, ends = period(kind)
  local stored = redis.call('HMGET', key, 'p', 'u')
  local used = 0
  -- A counter from an earlier period is spent history: the new period starts from zero.
  if tonumber(stored[1]) == index then used = tonumber(stored[2]) or 0 end
  local cost = math.min(reserve, limit)
  p.cost, p.x, p.used, p.fresh = cost, index, used, tonumber(stored[1]) ~= index
  p.now_left, p.left, p.now_reset, p.reset = limit - used, limit - used - cost, ends - now, ends - now
  if used + cost <= limit then return true, 0 end
  return false, ends - now
end

local function inflight(p, key, limit)
  -- Leases are scored by expiry: those at or before now are dead and do not count.
  -- Both reads are O(log n), however many requests are in flight.
  local count = redis.call('ZCOUNT', key, '(' .. int(now), '+inf')
  local first = redis.call('ZRANGEBYSCORE', key, '(' .. int(now), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local reset = lease_ttl
  if first[2] then reset = tonumber(first[2]) - now end
  p.now_left, p.left, p.now_reset, p.reset = limit - count, limit - count - 1, reset, reset
  if count < limit then return true, 0 end
  return false, math.min(reset, inflight_retry)
end

for i = 1, n do
  local kind, limit, burst = specs[i][1], specs[i][2], specs[i][3]
  local key = KEYS[2 + i]
  local p = {kind = kind, key = key, cost = 0, x = 0}
  local ok, wait
  if kind == 'r' or kind == 't' then
    ok, wait = gcra(p, key, kind, limit, burst)
  elseif kind == 'd' or kind == 'm' then
    ok, wait = quota(p, key, kind, limit)
  else
    ok, wait = inflight(p, key, limit)
  end
  if not ok then
    allowed = false
    -- A spent quota binds before any rate: waiting a few seconds cannot fix it.
    local is_quota = kind == 'd' or kind == 'm'
    if binding == 0 or (is_quota and not binding_is_quota)
        or (is_quota == binding_is_quota and wait > retry) then
      binding, retry, binding_is_quota = i, wait, is_quota
    end
  end
  plans[i] = p
end

-- The reply describes the state after this admission when allowed, the untouched state when
-- denied. Integers are formatted explicitly: tostring() would print 1.79e+15 for a timestamp.
local function reply(ok)
  local r = {ok and 1 or 0, binding, retry, now}
  for i = 1, n do
    local p = plans[i]
    local left, reset = p.left, p.reset
    if not ok then left, reset = p.now_left, p.now_reset end
    r[3 + 2 * i] = math.max(left, 0)
    r[4 + 2 * i] = math.max(reset, 0)
  end
  for j = 1, #r do r[j] = int(r[j]) end
  return table.concat(r, ' ')
end

local function audit(name)
  local prefix = ARGV[2]
  if prefix == '' then return end
  local field = prefix .. name .. '|' .. int(math.floor(now / MINUTE) * 60) .. '|'
  redis.call('HINCRBY', KEYS[2], field .. 'n', 1)
  redis.call('HSETNX', KEYS[2], field .. 'f', int(now))
  redis.call('HSET', KEYS[2], field .. 'l', int(now))
  local addr = ARGV[3]
  if addr ~= '' then
    local seen = redis.call('HGET', KEYS[2], field .. 'a')
    if not seen then
      redis.call('HSET', KEYS[2], field .. 'a', addr)
    elseif not string.find(',' .. seen .. ',', ',' .. addr .. ',', 1, true) then
      local _, commas = string.gsub(seen, ',', '')
      if commas + 1 < sample_max then
        redis.call('HSET', KEYS[2], field .. 'a', seen .. ',' .. addr)
      end
    end
  end
  redis.call('PEXPIRE', KEYS[2], audit_ttl_ms)
  -- In the same script as the write: the flusher can never miss a buffer it holds.
  local index = KEYS[3 + n]
  redis.call('SADD', index, KEYS[2])
  if redis.call('PTTL', index) < audit_ttl_ms then redis.call('PEXPIRE', index, audit_ttl_ms) end
end

if not allowed then
  audit(specs[binding][4])
  return reply(false)
end

local lease = ARGV[1]
local record = {int(reserve)}
for i = 1, n do
  local p = plans[i]
  if p.kind == 'r' or p.kind == 't' then
    redis.call('SET', p.key, int(p.new_tat), 'PX', ms(p.new_tat - now, 1))
  elseif p.kind == 'd' or p.kind == 'm' then
    redis.call('HSET', p.key, 'p', int(p.x), 'u', int(p.used + p.cost))
    -- The TTL is set when a period's counter starts; it ends with the period.
    if p.fresh then redis.call('PEXPIRE', p.key, ms(p.reset, 1000)) end
  elseif lease ~= '' then
    redis.call('ZREMRANGEBYSCORE', p.key, '-inf', int(now))
    redis.call('ZADD', p.key, int(now + lease_ttl), lease)
    -- The set outlives its longest lease; every lease gets the same TTL from now.
    local set_ttl = ms(lease_ttl, 1000)
    if redis.call('PTTL', p.key) < set_ttl then redis.call('PEXPIRE', p.key, set_ttl) end
  end
  record[i + 1] = p.kind .. ' ' .. int(p.cost) .. ' ' .. int(p.x)
end

if lease ~= '' then
  redis.call('SET', KEYS[1], table.concat(record, ';'), 'PX', record_ttl_ms)
end

return reply(true)
