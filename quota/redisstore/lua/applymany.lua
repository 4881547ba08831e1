-- applymany.lua: the queued operations of many keys in one call, on a
-- single Redis (a cluster runs apply.lua per key: its keys live on
-- different nodes). KEYS are the keys' pairs in order, ARGV[2 + i] the
-- operations of pair i. Returns each pair's woke flag.
local out = {}
for i = 1, #KEYS, 2 do
  MK, RK = KEYS[i], KEYS[i + 1]
  woke = 0
  if begin(ARGV[2 + (i + 1) / 2]) then save() end
  out[#out + 1] = woke
end
return out
