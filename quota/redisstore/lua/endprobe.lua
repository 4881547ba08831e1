-- endprobe.lua: Store.EndProbe (MemoryStore.EndProbe). ARGV[3] the probe's
-- id. Returns {woke}.
local applied = begin()
local tg = K.tg
if K.exists and tg and tg.probeID == tonumber(ARGV[3]) then
  tg.probing, tg.probeID, tg.informed = false, 0, true
  wakeWaiters()
  applied = true
end
if applied then save() end
return {woke}
