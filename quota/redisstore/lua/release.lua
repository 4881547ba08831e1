-- release.lua: Store.Release (MemoryStore.Release).
-- ARGV[3] limits, [4] slot, [5] id, [6] scout (1/0).
-- Returns (packed) known, now, at, slot, binding count, binding window, held,
-- probe, wakeable, woke; known is 0 when nothing holds the request back (the key
-- or the entry is gone, or it was released already).
local applied = begin()
local req = parseLimits(ARGV[3])
local slot0, id, scout = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
if not K.exists then
  return packed(0, t, t, slot0, 0, 0, 0, 0, 0, woke)
end
expire(t)
local i = find(slot0, id)
if i == 0 or K.open[i].state ~= QUEUED then
  save()
  return packed(0, t, t, slot0, 0, 0, 0, 0, 0, woke)
end
local limits = limitsAt(req, t)
track(limits, t)
local slot, at, binding, held, wakeable = earliest(limits, math.max(t, K.open[i].at), t, i, id, scout)
if at <= t then
  local probe = release(i, t)
  save()
  return packed(1, t, t, K.open[i].at, 0, 0, b2n(held), b2n(probe), 0, woke)
end
if slot > K.open[i].at then
  i = moveOpen(i, slot)
end
if wakeable then wakeChan() end
save()
return packed(1, t, at, K.open[i].at, binding.count, binding.window, b2n(held), 0, b2n(wakeable), woke)
