-- inspect.lua: Inspector.Inspect (MemoryStore.Inspect). ARGV[3] limits.
-- Returns {known, now, queued, in flight, hold until, probing, budget,
-- budget until, learned until, n, [count, window, used, next free]*n,
-- m, [count, window]*m, booked}; known is 0 for a key Redis does not hold.
local applied = begin()
if applied then save() end
if not K.exists then return {0, t} end
expire(t)
local queued, inflight, booked = 0, 0, 0
for _, e in ipairs(K.open) do
  if e.state == ONWAY then inflight = inflight + 1
  elseif e.state == BOOKING then booked = booked + 1
  else queued = queued + 1 end
end
local out = {1, t, queued, inflight, 0, 0, 0, 0, 0}
local ls = limitsAt(parseLimits(ARGV[3]), t)
out[#out + 1] = #ls
for _, l in ipairs(ls) do
  local w = l.window
  local used = 0
  local b = bucketsFor(w)
  if l.count > EXACT and b then
    used = bcountFrom(b, t - w) + inflight
  else
    used = K.rn - upperBound(t - w) + inflight
  end
  local nextFree = t
  local nth, ok = nthLatest(l.count, t, t, 0)
  if ok and nth + w > t then nextFree = nth + w end
  out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = l.count, w, used, nextFree
end
local tg = K.tg
local learned = {}
if tg then
  if tg.holdUntil > t then out[5] = tg.holdUntil end
  out[6] = b2n(tg.probing)
  if t < tg.budgetUntil then out[7], out[8] = tg.budget, tg.budgetUntil end
  if #tg.learned > 0 and t < tg.learnedUntil then
    learned = tg.learned
    out[9] = tg.learnedUntil
  end
end
out[#out + 1] = #learned
for _, l in ipairs(learned) do out[#out + 1], out[#out + 2] = l.count, l.window end
out[#out + 1] = booked
return out
