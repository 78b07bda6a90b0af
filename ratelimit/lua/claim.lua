-- CLAIM: the flusher's first step for the live buffers one dirty-buffer index lists: each is
-- RENAMEd to its batch key, and in the index the live name is replaced by the batch's, all in
-- one script. A settle after this starts a new live buffer (and lists it again); a flusher
-- that dies after this leaves the batch listed, so the next flush (any process) applies it.
-- Nothing is ever scanned: the cost is the number of buffers written since the last flush.
--
-- KEYS[1]          the dirty-buffer index  rlbuf:v1:dirty[:{<slot tag>}]
-- KEYS[2i], KEYS[2i+1]  live buffer i and the batch key it becomes, <live>:batch:<uuid>
--                  (every key in the index's hash slot: on a cluster the index is per slot)
--
-- Returns the batch keys created (a live buffer gone meanwhile, expired or claimed by another
-- flusher, is only dropped from the index).

local claimed = {}
for i = 2, #KEYS, 2 do
  local live, batch = KEYS[i], KEYS[i + 1]
  redis.call('SREM', KEYS[1], live)
  if redis.call('EXISTS', live) == 1 then
    redis.call('RENAME', live, batch)
    redis.call('SADD', KEYS[1], batch)
    claimed[#claimed + 1] = batch
  end
end
return claimed
