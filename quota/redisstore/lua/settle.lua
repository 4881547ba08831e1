-- settle.lua: the queued settles of keys that have nothing else queued
-- (the common case), appended to each key's state as records (RECORD) that
-- the next call loading the key applies before anything else, as begin()
-- would have applied the operations: no call unpacks and packs a key for
-- its settles alone. KEYS are the keys, ARGV[2 + i] the records of KEYS[i].
-- A key Redis no longer holds is skipped (applySettle ignores it too); a
-- key that is kept lives at least its longest window past the latest send
-- recorded. Returns nothing.
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local tm = redis.call('TIME')
  now = tonumber(tm[1]) * SECOND + tonumber(tm[2])
end
for i = 1, #KEYS do
  local k, recs = KEYS[i], ARGV[2 + i]
  local head = redis.call('GETRANGE', k, 0, HEAD_SIZE - 1)
  if #head == HEAD_SIZE then
    redis.call('APPEND', k, recs)
    local _, _, mw = struct.unpack(HEAD, head)
    local latest = NOTIME
    for p = 1, #recs, RECORD_SIZE do
      local _, _, _, x = struct.unpack(RECORD, recs, p)
      latest = math.max(latest, x)
    end
    local ttl = math.ceil((latest + math.max(mw, RECENT) - now) / 1000) + TTL_SLACK_MS
    if ttl > 0 and redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
  end
end
return {}
