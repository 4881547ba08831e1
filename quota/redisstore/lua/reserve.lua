-- reserve.lua: Store.Reserve (MemoryStore.Reserve in quota/memory.go).
-- ARGV[3] limits, [4] max wait, [5] max queue, [6] scout (1/0),
-- [7] booking round, [8] grace, [9] early, [10] transit.
-- Returns (packed) ok, now, at, slot, id, binding count, binding window,
-- queue full, held, probe, booked, wakeable, woke.
begin()
local req = parseLimits(ARGV[3])
local maxWait, maxQueue, scout = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
local round, grace, early = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local transit = tonumber(ARGV[10])
K.exists = true
expire(t)
prune(t)
local limits = limitsAt(req, t)
track(limits, t)

local function answer(ok, at, slot, id, binding, queueFull, held, probe, booked, wakeable)
  save()
  return packed(b2n(ok), t, at, slot, id, binding.count, binding.window, b2n(queueFull), b2n(held), b2n(probe),
                b2n(booked), b2n(wakeable), woke)
end

-- decided: open entry i may leave at at; released when at is now.
local function decided(i, at, binding, held, wakeable)
  local e = K.open[i]
  if at <= t then
    local probe = release(i, t)
    return answer(true, at, e.at, e.id, NOLIMIT, false, false, probe, false, false)
  end
  if wakeable then wakeChan() end
  return answer(true, at, e.at, e.id, binding, false, held, false, false, wakeable)
end

local i = takeBooking(t)
if i > 0 then
  local e = K.open[i]
  local slot, at, binding, held, wakeable = earliest(limits, math.max(t, e.at), t, i, e.id, scout)
  if at < e.expires then
    K.open[i].state = QUEUED
    setTransit(i, transit)
    return decided(moveOpen(i, slot), at, binding, held, wakeable)
  end
end
K.id = K.id + 1
local id = K.id
local cand = t
local last = lastBooked()
if last > cand then cand = last end
local slot, at, binding, held, wakeable = earliest(limits, cand, t, 0, id, scout)
local nwait = waiting()
if at == t then
  -- admitted now
elseif at - t <= maxWait or (wakeable and maxWait > 0) then
  if nwait >= maxQueue then
    return answer(false, at, 0, 0, binding, true, held, false, false, false)
  end
else
  -- refused: with a booking for its retry when asked and the queue has room
  if wakeable and K.tg and K.tg.probing and K.tg.probeID ~= 0 then
    -- the key waits for a probe's outcome: no time is known (a key waiting
    -- for the upstream's reset is told that reset)
    return answer(false, math.min(at, t + REFUSAL_WAIT), 0, 0, binding, false, held, false, false, false)
  elseif held or grace <= 0 then
    return answer(false, at, 0, 0, binding, false, held, false, false, false)
  elseif nwait >= maxQueue then
    return answer(false, at, 0, 0, binding, true, held, false, false, false)
  end
  local told = at
  if round > 0 then told = t + floorDiv(at - t + round - 1, round) * round end
  insertOpen({at = told, id = id, state = BOOKING, from = told - early, expires = told + grace, transit = 0})
  return answer(false, told, 0, 0, binding, false, held, false, true, false)
end
return decided(insertOpen({at = slot, id = id, from = 0, expires = 0, state = QUEUED, transit = transit}), at, binding, held, wakeable)
