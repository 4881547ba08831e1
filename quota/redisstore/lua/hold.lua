-- hold.lua: Store.Hold (MemoryStore.Hold). ARGV[3] the hold. Returns {woke}.
begin()
K.exists = true
local tg = teach()
tg.holdUntil = math.max(tg.holdUntil, t + tonumber(ARGV[3]))
tg.probing, tg.probeID = true, 0
wakeWaiters()
save()
return {woke}
