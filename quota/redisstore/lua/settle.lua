-- settle.lua: the queued settles of keys that have nothing else queued
-- (the common case), appended to each key's state as records (RECORD) that
-- the next call loading the key applies before anything else, as begin()
-- would have applied the operations: no call unpacks and packs a key for
-- its settles alone. KEYS are the keys, ARGV[2 + i] the records of KEYS[i].
-- A key Redis no longer holds is skipped (applySettle ignores it too); a
-- key that is kept lives at least its longest window past the latest send
-- recorded. Returns nothing.
local now = callTime()
for i = 1, #KEYS do
  local k, recs = KEYS[i], ARGV[2 + i]
  local mw = redis.call('GETRANGE', k, 16, 23) -- HEAD's mw, or '' when the key is gone
  if #mw == 8 then
    redis.call('APPEND', k, recs)
    local latest = NOTIME
    for p = 1, #recs, RECORD_SIZE do
      local _, _, _, x = struct.unpack(RECORD, recs, p)
      latest = math.max(latest, x)
    end
    local need = math.ceil((latest + math.max(struct.unpack('>d', mw), RECENT) - now) / 1000)
    if need > 0 and redis.call('PTTL', k) < need then redis.call('PEXPIRE', k, need + TTL_SLACK_MS) end
  end
end
return {}
