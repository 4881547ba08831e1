-- apply.lua: the queued operations of one key (settles, observations),
-- applied off the request's path. Returns {woke}.
if begin() then save() end
return {woke}
