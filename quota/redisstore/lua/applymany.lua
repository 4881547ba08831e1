-- applymany.lua: the queued operations of keys (settles, observations),
-- applied off the requests' path: one call for many keys on a single
-- Redis, one per key on a cluster (its keys live on different nodes). KEYS
-- are the keys, ARGV[2 + i] the operations of KEYS[i]. Returns each key's
-- woke flag.
local out = {}
for i = 1, #KEYS do
  MK = KEYS[i]
  woke = 0
  if begin(ARGV[2 + i]) then save() end
  out[#out + 1] = woke
end
return out
