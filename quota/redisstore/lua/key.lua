-- key.lua: the decisions of quota/key.go on one key, in Redis. The store
-- loads this file with one function per decision (reserve.lua, ...) as a
-- Redis function library (FUNCTION LOAD, FCALL), or, on a Redis without
-- functions, runs it followed by one entry as a script (EVALSHA). Times
-- are microseconds since the Unix epoch (exact in Lua's doubles until the
-- year 2255); the steps, their order and their names follow key.go, so that
-- the two make the same decisions.
--
-- KEYS[1] is the key's state: one string (see load), read with one GET
-- and written with one SET.
-- ARGV[1] is "now" (empty: Redis TIME), ARGV[2] the operations the caller
-- queued for the key (settles, observations), applied first, in order.
-- Every call begins with setup(keys, args): a library's locals outlive the
-- call.

local NOTIME = -4611686018427387904 -- -2^62: "no such time"
local EXACT = 4096                  -- quota.ExactCount
local SLOTS = 256                   -- quota.BucketSlots
local MIN_HISTORY = 64
local STALE = 600000000             -- staleOnItsWay: 10m
local REFUSAL_WAIT = 1000000        -- 1s
local PROBE_TIMEOUT = 30000000      -- quota.ProbeTimeout
local RECENT = 10000000             -- recentSends: 10s
local SECOND = 1000000
local TTL_SLACK_MS = 60000          -- every key outlives what it needs by a minute
local QUEUED, BOOKING, ONWAY = 0, 1, 2

local KEYS, ARGV -- the call's keys and arguments
local MK         -- KEYS[1]; applymany.lua moves it from key to key
local K          -- the key's state, loaded by load()
local t          -- the store's time of this call
local woke = 0   -- 1 when waiters were told to look again

-- setup starts a call: nothing of the previous one is kept.
local function setup(keys, args)
  KEYS, ARGV = keys, args
  MK = keys[1]
  K, t, woke = nil, nil, 0
end

-- floorDiv is exact on doubles holding integers (a / b may round up).
local function floorDiv(a, b)
  local r = math.fmod(a, b)
  if r < 0 then r = r + b end
  return (a - r) / b
end

-- ---------------------------------------------------------------- the ring
-- The send times, ascending, are the string K.ring: 8 bytes each (a
-- big-endian double), index 0 the oldest, K.rn of them, read in place.
-- It holds at most K.hc.

local function rget(i)
  return (struct.unpack('>d', K.ring, i * 8 + 1))
end

-- rread returns the bytes of [i, j).
local function rread(i, j)
  if j <= i then return '' end
  return string.sub(K.ring, i * 8 + 1, j * 8)
end

-- rinsert puts x at index i (the ring has room).
local function rinsert(i, x)
  local r = K.ring
  if i == K.rn then
    K.ring = r .. struct.pack('>d', x)
  else
    K.ring = string.sub(r, 1, i * 8) .. struct.pack('>d', x) .. string.sub(r, i * 8 + 1)
  end
  K.rn = K.rn + 1
end

local function rdelete(i)
  K.ring = string.sub(K.ring, 1, i * 8) .. string.sub(K.ring, i * 8 + 9)
  K.rn = K.rn - 1
end

local function rdropFront(n)
  K.ring = string.sub(K.ring, n * 8 + 1)
  K.rn = K.rn - n
end

-- upperBound: the first index whose time is > x; lowerBound: >= x.
local function upperBound(x)
  local n = K.rn
  if n == 0 or rget(n - 1) <= x then return n end
  local lo, hi = 0, n - 1
  while lo < hi do
    local m = math.floor((lo + hi) / 2)
    if rget(m) > x then hi = m else lo = m + 1 end
  end
  return lo
end

local function lowerBound(x)
  local n = K.rn
  if n == 0 or rget(n - 1) < x then return n end
  local lo, hi = 0, n - 1
  while lo < hi do
    local m = math.floor((lo + hi) / 2)
    if rget(m) >= x then hi = m else lo = m + 1 end
  end
  return lo
end

-- rgrow gives the ring room for cap times.
local function rgrow(cap)
  if cap > K.hc then K.hc = cap end
end

-- --------------------------------------------------------------- buckets
-- A bucket log: {window, width, total, slots = {index, count, index, ...}}.

local function newBucketLog(window)
  return {window = window, width = floorDiv(window + SLOTS - 1, SLOTS), total = 0, slots = {}}
end

local function bfind(b, j) -- the first pair whose index is >= j (1-based pair number)
  local s = b.slots
  local lo, hi = 1, #s / 2 + 1
  while lo < hi do
    local m = math.floor((lo + hi) / 2)
    if s[2 * m - 1] >= j then hi = m else lo = m + 1 end
  end
  return lo
end

local function badd(b, x, delta)
  local j = floorDiv(x, b.width)
  local s = b.slots
  local n = #s / 2
  local i
  if n > 0 and s[2 * n - 1] == j then i = n else i = bfind(b, j) end
  if i <= n and s[2 * i - 1] == j then
    local c = s[2 * i] + delta
    if c <= 0 then
      b.total = b.total - s[2 * i]
      table.remove(s, 2 * i)
      table.remove(s, 2 * i - 1)
    else
      s[2 * i] = c
      b.total = b.total + delta
    end
    return
  end
  if delta > 0 then
    table.insert(s, 2 * i - 1, delta)
    table.insert(s, 2 * i - 1, j)
    b.total = b.total + delta
  end
end

local function btrim(b, now)
  local j0 = floorDiv(now - b.window, b.width)
  local s = b.slots
  local i = bfind(b, j0)
  if i > 1 then
    local kept, drop = {}, 0
    for p = 1, 2 * (i - 1), 2 do drop = drop + s[p + 1] end
    for p = 2 * i - 1, #s do kept[#kept + 1] = s[p] end
    b.slots, b.total = kept, b.total - drop
  end
end

-- bearliest: the earliest time from c at which the window then holds fewer
-- than room counted sends (bucketLog.earliest). With the total below room,
-- no slot can reach it: the scan is skipped.
local function bearliest(b, room, c)
  if b.total <= room - 1 then return 0, false end
  local j0 = floorDiv(c - b.window, b.width)
  local s = b.slots
  local sum = 0
  for p = #s - 1, 1, -2 do
    if s[p] < j0 then break end
    if sum + s[p + 1] > room - 1 then
      return (s[p] + 1) * b.width + b.window, true
    end
    sum = sum + s[p + 1]
  end
  return 0, false
end

local function bcountFrom(b, from)
  local s, n = b.slots, 0
  for p = 1, #s, 2 do
    if (s[p] + 1) * b.width > from then n = n + s[p + 1] end
  end
  return n
end

local function bcountEndingBy(b, from, to)
  local s, n = b.slots, 0
  for p = 1, #s, 2 do
    if s[p] * b.width >= from and (s[p] + 1) * b.width <= to then n = n + s[p + 1] end
  end
  return n
end

-- ------------------------------------------------------------ load, save

local function emptyKey()
  return {hc = MIN_HISTORY, cm = NOTIME, mw = 0, rn = 0, id = 0, lt = NOTIME, ring = '', records = '',
          open = {}, transits = 0, buckets = {}, tg = nil, exists = false}
end

-- The key's state is one string at MK, of big-endian doubles:
--   HEAD    hc cm mw rn id lt, and how many open entries, bucket logs and
--           taught records (0 or 1) follow
--   ENTRY   per open entry: at id from expires state transit
--   BUCKET  per bucket log: window width total n, then n (index, count)
--   TAUGHT  holdUntil probing probeID probeAt budget budgetUntil budgetFrom
--           informed learnedUntil replace waiters covered n, then n
--           (count, window) learned
-- then the ring (K.rn send times), and last the settles settle.lua
-- appended since the key was written (RECORD each), which begin() applies.
local HEAD, ENTRY, BUCKET, TAUGHT = '>ddddddddd', '>dddddd', '>dddd', '>ddddddddddddd'
local RECORD, RECORD_SIZE = '>dddd', 32
local SETTLE, MOVE = 1, 2 -- the kinds of records: 1 SLOT ID X (S), 2 PREV 0 X (M)

local formats = {} -- doubles(n) for n up to CHUNK
local CHUNK = 256  -- the most values one struct call packs or unpacks
local function doubles(n)
  local f = formats[n]
  if not f then
    f = '>' .. string.rep('d', n)
    formats[n] = f
  end
  return f
end

-- packed is the answer of a call: its numbers as one string of doubles
-- (no table to build, one bulk reply to read).
local function packed(...)
  return struct.pack(doubles(select('#', ...)), ...)
end

-- unpackDoubles reads n doubles of s from p into a new table; it returns
-- the table and the position after them.
local function unpackDoubles(s, p, n)
  if n <= CHUNK then
    local v = {struct.unpack(doubles(n), s, p)}
    p = v[n + 1]
    v[n + 1] = nil
    return v, p
  end
  local v = {}
  for i = 0, n - 1, CHUNK do
    local k = math.min(CHUNK, n - i)
    local c = {struct.unpack(doubles(k), s, p)}
    p = c[k + 1]
    for j = 1, k do v[i + j] = c[j] end
  end
  return v, p
end

-- packDoubles appends the doubles of v to parts.
local function packDoubles(parts, v)
  local n = #v
  for i = 1, n, CHUNK do
    local j = math.min(i + CHUNK - 1, n)
    parts[#parts + 1] = struct.pack(doubles(j - i + 1), unpack(v, i, j))
  end
end

-- load reads the key; K.exists is false when Redis holds nothing of it.
local function load()
  K = emptyKey()
  local s = redis.call('GET', MK)
  if not s then return end
  K.exists = true
  local nopen, nbuckets, taught, p
  K.hc, K.cm, K.mw, K.rn, K.id, K.lt, nopen, nbuckets, taught, p = struct.unpack(HEAD, s)
  local open = K.open
  for i = 1, nopen do
    local e = {}
    e.at, e.id, e.from, e.expires, e.state, e.transit, p = struct.unpack(ENTRY, s, p)
    open[i] = e
    if e.transit > 0 then K.transits = K.transits + 1 end
  end
  for i = 1, nbuckets do
    local b, n = {}, 0
    b.window, b.width, b.total, n, p = struct.unpack(BUCKET, s, p)
    b.slots, p = unpackDoubles(s, p, 2 * n)
    K.buckets[i] = b
  end
  if taught == 1 then
    local tg, n = {}, 0
    tg.holdUntil, tg.probing, tg.probeID, tg.probeAt, tg.budget, tg.budgetUntil, tg.budgetFrom, tg.informed,
      tg.learnedUntil, tg.replace, tg.waiters, tg.covered, n, p = struct.unpack(TAUGHT, s, p)
    tg.probing, tg.informed, tg.replace, tg.covered = tg.probing == 1, tg.informed == 1, tg.replace == 1, tg.covered == 1
    local v
    v, p = unpackDoubles(s, p, 2 * n)
    tg.learned = {}
    for j = 1, n do tg.learned[j] = {count = v[2 * j - 1], window = v[2 * j]} end
    K.tg = tg
  end
  K.ring = string.sub(s, p, p + K.rn * 8 - 1)
  K.records = string.sub(s, p + K.rn * 8)
end

local function b2n(b) if b then return 1 else return 0 end end

-- save writes the key back with a TTL that outlives everything a later
-- decision could need: its longest window, its open entries, its holds,
-- budget and learned windows.
local function save()
  local horizon = t + math.max(K.mw, RECENT)
  local open, tg = K.open, K.tg
  local parts = {struct.pack(HEAD, K.hc, K.cm, K.mw, K.rn, K.id, K.lt, #open, #K.buckets, b2n(tg ~= nil))}
  for i, e in ipairs(open) do
    parts[i + 1] = struct.pack(ENTRY, e.at, e.id, e.from, e.expires, e.state, e.transit)
    if e.state == BOOKING then horizon = math.max(horizon, e.expires)
    elseif e.state == ONWAY then horizon = math.max(horizon, e.expires + STALE + e.transit)
    else horizon = math.max(horizon, e.at + STALE) end
  end
  for _, b in ipairs(K.buckets) do
    parts[#parts + 1] = struct.pack(BUCKET, b.window, b.width, b.total, #b.slots / 2)
    packDoubles(parts, b.slots)
  end
  if tg then
    parts[#parts + 1] = struct.pack(TAUGHT, tg.holdUntil, b2n(tg.probing), tg.probeID, tg.probeAt, tg.budget,
      tg.budgetUntil, tg.budgetFrom, b2n(tg.informed), tg.learnedUntil, b2n(tg.replace), tg.waiters, b2n(tg.covered),
      #tg.learned)
    for _, l in ipairs(tg.learned) do parts[#parts + 1] = struct.pack('>dd', l.count, l.window) end
    horizon = math.max(horizon, tg.holdUntil + PROBE_TIMEOUT, tg.budgetUntil, tg.learnedUntil)
  end
  parts[#parts + 1] = K.ring
  local ttl = math.ceil((horizon - t) / 1000) + TTL_SLACK_MS
  redis.call('SET', MK, table.concat(parts), 'PX', ttl)
end

-- callTime is the call's time: the caller's "now" (a test clock), or
-- Redis TIME.
local function callTime()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local tm = redis.call('TIME')
  return tonumber(tm[1]) * SECOND + tonumber(tm[2])
end

-- clock sets t: the call's time, never earlier than a time this key
-- already saw.
local function clock()
  t = callTime()
  if K.lt ~= NOTIME and t < K.lt then t = K.lt end
  K.lt = t
end

-- parseLimits reads "COUNT WINDOW COUNT WINDOW ...". The lists it returns
-- are kept for the next calls of a library (a proxy sends few distinct
-- ones): nothing may change them.
local parsed, nparsed = {}, 0
local function parseLimits(s)
  local ls = parsed[s]
  if ls then return ls end
  local v = {}
  ls = {}
  for w in string.gmatch(s, '%S+') do v[#v + 1] = tonumber(w) end
  for p = 1, #v, 2 do ls[#ls + 1] = {count = v[p], window = v[p + 1]} end
  if nparsed >= 256 then parsed, nparsed = {}, 0 end
  parsed[s], nparsed = ls, nparsed + 1
  return ls
end

-- ------------------------------------------------------------- key state

local function teach()
  if not K.tg then
    K.tg = {holdUntil = 0, probing = false, probeID = 0, probeAt = 0, budget = 0, budgetUntil = 0,
            budgetFrom = NOTIME, informed = false, learned = {}, learnedUntil = 0, replace = false, waiters = 0,
            covered = false}
  end
  return K.tg
end

local function limitsAt(req, now)
  local tg = K.tg
  if not tg or #tg.learned == 0 or now >= tg.learnedUntil then return req end
  if tg.replace then return tg.learned end
  local out = {}
  for _, l in ipairs(req) do out[#out + 1] = l end
  for _, l in ipairs(tg.learned) do out[#out + 1] = l end
  return out
end

local function bucketsFor(window)
  for _, b in ipairs(K.buckets) do
    if b.window == window then return b end
  end
  return nil
end

local function track(limits, now)
  local cap = K.hc
  for _, l in ipairs(limits) do
    local w = l.window
    K.mw = math.max(K.mw, w)
    if l.count <= EXACT then
      cap = math.max(cap, l.count)
    elseif not bucketsFor(w) then
      local b = newBucketLog(w)
      local from = upperBound(now - w)
      local bytes = rread(from, K.rn)
      for p = 1, #bytes, 8 do badd(b, (struct.unpack('>d', bytes, p)), 1) end
      K.buckets[#K.buckets + 1] = b
    end
  end
  rgrow(cap)
end

-- expire drops the bookings that lapsed and the requests on their way for
-- too long; in Redis also queued requests STALE past their slot (a replica
-- that died with requests queued never releases nor cancels them).
local function expire(now)
  local kept
  for i, e in ipairs(K.open) do
    local drop = (e.state == BOOKING and now >= e.expires) or (e.state == ONWAY and now - e.expires >= STALE + e.transit)
      or (e.state == QUEUED and now - e.at >= STALE)
    if drop and e.transit > 0 then K.transits = K.transits - 1 end
    if drop and not kept then
      kept = {}
      for j = 1, i - 1 do kept[j] = K.open[j] end
    elseif kept and not drop then
      kept[#kept + 1] = e
    end
  end
  if kept then K.open = kept end
end

-- atMost counts the open entries whose slot is <= c (they are in slot order).
local function atMost(c)
  local es = K.open
  local lo, hi = 1, #es + 1
  while lo < hi do
    local m = math.floor((lo + hi) / 2)
    if es[m].at > c then hi = m else lo = m + 1 end
  end
  return lo - 1
end

local function find(at, id)
  local es = K.open
  local lo, hi = 1, #es + 1
  while lo < hi do
    local m = math.floor((lo + hi) / 2)
    if es[m].at >= at then hi = m else lo = m + 1 end
  end
  for i = lo, #es do
    if es[i].at ~= at then break end
    if es[i].id == id then return i end
  end
  return 0
end

local function insertOpen(e)
  local i = atMost(e.at) + 1
  table.insert(K.open, i, e)
  if e.transit > 0 then K.transits = K.transits + 1 end
  return i
end

local function removeOpen(i)
  local e = table.remove(K.open, i)
  if e.transit > 0 then K.transits = K.transits - 1 end
  return e
end

-- setTransit gives open entry i the transit d.
local function setTransit(i, d)
  local e = K.open[i]
  if (e.transit > 0) ~= (d > 0) then
    if d > 0 then K.transits = K.transits + 1 else K.transits = K.transits - 1 end
  end
  e.transit = d
end

local function moveOpen(i, at)
  local e = removeOpen(i)
  e.at = at
  return insertOpen(e)
end

-- nthLatestInTransit is nthLatest for a key with entries in transit: it
-- takes each open entry's effective time in turn (see key.go).
local function nthLatestInTransit(n, c, now, skip)
  local eff = {}
  for i, e in ipairs(K.open) do
    local from = math.max(e.at, now) -- the earliest it may still be sent
    if i ~= skip and from <= c then
      local untilT = from
      if e.transit == 0 then
      elseif e.state == ONWAY then untilT = math.max(now, e.expires + e.transit)
      else untilT = from + e.transit end
      eff[#eff + 1] = math.min(untilT, c)
    end
  end
  table.sort(eff)
  local a, b = #eff, K.rn - 1
  while true do
    local x
    if a >= 1 and (b < 0 or eff[a] >= rget(b)) then
      x = eff[a]
      a = a - 1
    elseif b >= 0 then
      x = rget(b)
      b = b - 1
    else
      return 0, false
    end
    n = n - 1
    if n == 0 then return x, true end
  end
end

-- nthLatest (1-based skip, 0 for none): see key.go.
local function nthLatest(n, c, now, skip)
  if K.transits > 0 then return nthLatestInTransit(n, c, now, skip) end
  local es = K.open
  local hi = atMost(c)
  local lo = math.min(atMost(now), hi)
  local future = hi - lo
  if skip > lo and skip <= hi then future = future - 1 end
  if n <= future then
    local j = hi - n + 1
    if skip >= j and skip <= hi then j = j - 1 end
    return es[j].at, true
  end
  local due = lo
  if skip >= 1 and skip <= lo then due = due - 1 end
  if n <= future + due then return now, true end
  local r = n - future - due
  if r <= K.rn then return rget(K.rn - r), true end
  return 0, false
end

local function openUpTo(c, skip)
  local hi = atMost(c)
  if skip >= 1 and skip <= hi then hi = hi - 1 end
  return hi
end

local function free(l, c, now, skip)
  local w = l.window
  if l.count <= EXACT then
    local nth, ok = nthLatest(l.count, c, now, skip)
    return nth + w, ok
  end
  local u = openUpTo(c, skip)
  if u >= l.count then
    local nth, ok = nthLatest(l.count, c, now, skip)
    return nth + w, ok
  end
  local b = bucketsFor(w)
  if b then return bearliest(b, l.count - u, c) end
  return 0, false
end

local function holdGate(c)
  local tg = K.tg
  if tg and c < tg.holdUntil then return tg.holdUntil end
  return c
end

local function waitGate(c, now, id, scout)
  local tg = K.tg
  if scout then
    if tg and tg.budgetUntil > 0 and now >= tg.budgetUntil then
      -- the reported window is over: scout again, unless the key had its
      -- upstream to itself
      tg.informed = tg.covered
      tg.budgetUntil, tg.budgetFrom = 0, NOTIME
    end
    if not tg or (not tg.informed and not tg.probing) then
      tg = teach()
      tg.probing, tg.probeID = true, 0
    end
  end
  if not tg then return c end
  if tg.probing and tg.probeID ~= 0 and tg.probeID ~= id and now - tg.probeAt < PROBE_TIMEOUT then
    return math.max(c, tg.probeAt + PROBE_TIMEOUT)
  end
  if c < tg.budgetUntil and tg.budget <= 0 and not tg.covered then return tg.budgetUntil end
  return c
end

local NOLIMIT = {count = 0, window = 0}

-- earliest: see key.go. Returns slot, at, binding, held, wakeable.
local function earliest(limits, cand, now, skip, id, scout)
  for _ = 1, 1 + #K.open + 2 * SLOTS do
    local nxt = math.max(cand, holdGate(cand))
    for _, l in ipairs(limits) do
      local f, ok = free(l, cand, now, skip)
      if ok then nxt = math.max(nxt, f) end
    end
    if nxt == cand then break end
    cand = nxt
  end
  local slot, binding, held, wakeable = cand, NOLIMIT, false, false
  if slot > now then
    local best = NOTIME
    for _, l in ipairs(limits) do
      local f, ok = free(l, slot, now, skip)
      if ok and (f > best or (f == best and l.window > binding.window)) then best, binding = f, l end
    end
    local tg = K.tg
    if tg and tg.holdUntil == slot and best < slot then binding, held = NOLIMIT, true end
  end
  local at = slot
  local w = waitGate(slot, now, id, scout)
  if w > slot then at, binding, held, wakeable = w, NOLIMIT, true, true end
  return slot, at, binding, held, wakeable
end

-- release marks open entry i as on its way; it reports whether it probes.
local function release(i, now)
  local e = K.open[i]
  e.state, e.expires = ONWAY, now
  local tg = K.tg
  if not tg then return false end
  local probe = false
  if tg.probing and (tg.probeID == 0 or now - tg.probeAt >= PROBE_TIMEOUT) then
    tg.probeID, tg.probeAt = e.id, now
    probe = true
  end
  if now < tg.budgetUntil then tg.budget = tg.budget - 1 end
  return probe
end

-- wakeWaiters tells the waiters of the key, on every replica, to look
-- again: the channel PREFIX:vN:wake, the key's tag as the message.
local function wakeWaiters()
  local tg = K.tg
  if tg and tg.waiters == 1 then
    tg.waiters = 0
    woke = 1
    local base, tag = string.match(MK, '^(.*):{(.-)}:m$')
    redis.call('PUBLISH', base .. ':wake', tag)
  end
end

-- wakeChan: a waiter was handed a Wake.
local function wakeChan() teach().waiters = 1 end

local function waiting()
  local n = 0
  for _, e in ipairs(K.open) do
    if e.state ~= ONWAY then n = n + 1 end
  end
  return n
end

local function lastBooked()
  for i = #K.open, 1, -1 do
    if K.open[i].state ~= ONWAY then return K.open[i].at end
  end
  return NOTIME
end

local function takeBooking(now)
  for i, e in ipairs(K.open) do
    if e.state == BOOKING and e.from <= now then return i end
  end
  return 0
end

local function addSent(x)
  for _, b in ipairs(K.buckets) do badd(b, x, 1) end
  local i = upperBound(x)
  if K.rn >= K.hc then
    if i == 0 then
      K.cm = math.max(K.cm, x + 1)
      return
    end
    K.cm = math.max(K.cm, rget(0) + 1)
    rdropFront(1)
    rinsert(i - 1, x)
    return
  end
  rinsert(i, x)
end

local function moveSent(prev, x)
  for _, b in ipairs(K.buckets) do
    badd(b, prev, -1)
    badd(b, x, 1)
  end
  local i = lowerBound(prev)
  if i < K.rn and rget(i) == prev then
    rdelete(i)
    rinsert(upperBound(x), x)
  end
end

local function prune(now)
  local keep = now - math.max(K.mw, RECENT)
  local tg = K.tg
  if tg and now < tg.budgetUntil and tg.budgetFrom ~= NOTIME then keep = math.min(keep, tg.budgetFrom) end
  if K.rn > 0 and rget(0) <= keep then
    local i = upperBound(keep)
    K.cm = math.max(K.cm, rget(i - 1) + 1)
    rdropFront(i)
  end
  for _, b in ipairs(K.buckets) do btrim(b, now) end
end

local function sentIn(from, sentAt, now)
  if from == NOTIME then return 0, 0, false end
  if K.cm <= from then
    local lo = lowerBound(from)
    local mid = upperBound(sentAt)
    return K.rn - lo, math.max(mid - lo, 0), true
  end
  for _, b in ipairs(K.buckets) do
    if b.window >= now - from then return bcountFrom(b, from), bcountEndingBy(b, from, sentAt), true end
  end
  return 0, 0, false
end

local function observe(o, now, sentAt, untilT)
  local tg = teach()
  local from = NOTIME -- when the upstream's window began
  if o.period > 0 then
    -- resets are reported in whole seconds, rounded either way, and the
    -- window holds requests sent up to Delay before it began
    from = untilT - o.period - SECOND - o.delay
    K.mw = math.max(K.mw, o.period)
  elseif tg.budgetUntil > 0 and tg.budgetUntil <= now then
    from = tg.budgetUntil
  end
  local onWay, onWayBefore = 0, 0
  for _, e in ipairs(K.open) do
    if e.state == ONWAY then
      onWay = onWay + 1
      if e.expires <= sentAt then onWayBefore = onWayBefore + 1 end
    end
  end
  local budget
  local covered = false
  local sent, counted, known = sentIn(from, sentAt, now)
  sent, counted = sent + onWay, counted + onWayBefore
  local reserve = 0
  if o.limit > 0 then reserve = math.ceil(o.reserve * o.limit) end
  if known and o.limit > 0 and o.limit - o.remaining <= sent then
    budget = o.limit - sent
    for _, l in ipairs(o.limits) do
      covered = covered or (o.period > 0 and l.count <= o.limit and l.window >= o.period)
    end
  elseif known then
    budget = o.remaining - (sent - counted) - reserve
  else
    local after = onWay - onWayBefore
    after = after + K.rn - upperBound(sentAt)
    budget = o.remaining - after - reserve
  end
  tg.informed = true
  if now >= tg.budgetUntil or untilT > tg.budgetUntil + SECOND then
    tg.budget, tg.budgetUntil, tg.budgetFrom, tg.covered = budget, untilT, from, covered
  else
    tg.budget = math.min(tg.budget, budget)
    tg.covered = tg.covered and covered
  end
  wakeWaiters()
end

-- ------------------------------------------------------------ operations
-- Queued by the caller, applied before the decision, in order:
--   S SLOT ID X                      settle: the request left at X
--   M PREV X                         settled again later: move PREV to X
--   O SENTAT LIMIT REMAINING RESETAT PERIOD RESERVE KEEPFOR REPLACE DELAY [COUNT WINDOW]...
--                                    observe (RESETAT 0: none)
--   L [COUNT WINDOW]...              keep what these limits need (before A)
--   A X...                           sends made elsewhere (the proxy's local
--                                    fallback while Redis was unreachable)

local function applySettle(slot, id, x)
  if not K.exists then return end
  local i = find(slot, id)
  if i == 0 then return end
  x = math.max(x, K.open[i].at)
  removeOpen(i)
  addSent(x)
end

local function applyMove(prev, x)
  if not K.exists then return end
  moveSent(prev, x)
end

local function applyObserve(v)
  local o = {sentAt = v[1], limit = v[2], remaining = v[3], resetAt = v[4], period = v[5], reserve = v[6],
             keepFor = v[7], replace = v[8] == 1, delay = v[9], limits = {}}
  for p = 10, #v, 2 do o.limits[#o.limits + 1] = {count = v[p], window = v[p + 1]} end
  K.exists = true
  if #o.limits > 0 and o.keepFor > 0 then
    local tg = teach()
    tg.learned = o.limits
    tg.learnedUntil = t + o.keepFor
    tg.replace = o.replace
    track(o.limits, t)
  end
  if o.remaining < 0 or o.resetAt == 0 then return end
  local untilT = o.resetAt
  if untilT <= t then return end
  observe(o, t, o.sentAt, untilT)
end

-- begin loads the key, sets the time and applies the queued operations
-- (ops, default ARGV[2]). It reports whether any was applied (the key must
-- then be saved).
local function begin(ops)
  load()
  clock()
  local applied = false
  local r = K.records
  if r ~= '' then
    -- queued before ops: settle.lua appended them
    for p = 1, #r, RECORD_SIZE do
      local kind, a, b, x = struct.unpack(RECORD, r, p)
      if kind == SETTLE then applySettle(a, b, x) else applyMove(a, x) end
    end
    K.records = ''
    applied = true
  end
  ops = ops or ARGV[2]
  if ops == '' then return applied end
  for line in string.gmatch(ops, '[^\n]+') do
    local v = {}
    local kind
    for w in string.gmatch(line, '%S+') do
      if kind then v[#v + 1] = tonumber(w) else kind = w end
    end
    if kind == 'S' then applySettle(v[1], v[2], v[3])
    elseif kind == 'M' then applyMove(v[1], v[2])
    elseif kind == 'O' then applyObserve(v)
    elseif kind == 'L' then
      K.exists = true
      local ls = {}
      for p = 1, #v, 2 do ls[#ls + 1] = {count = v[p], window = v[p + 1]} end
      track(ls, t)
    elseif kind == 'A' then
      K.exists = true
      for _, x in ipairs(v) do addSent(x) end
    end
    applied = true
  end
  return applied
end
