-- cancel.lua: Store.Cancel (MemoryStore.Cancel). ARGV[3] slot, [4] id.
-- Returns {woke}.
begin()
if not K.exists then return {woke} end
local i = find(tonumber(ARGV[3]), tonumber(ARGV[4]))
if i > 0 then removeOpen(i) end
local tg = K.tg
if tg and tg.probeID == tonumber(ARGV[4]) then
  tg.probeID = 0
  wakeWaiters()
end
save()
return {woke}
