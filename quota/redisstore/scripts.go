package redisstore

import (
	"embed"

	"github.com/redis/go-redis/v9"
)

// The scripts: key.lua (the decisions of quota/key.go) followed by one
// entry per decision. go-redis runs each with EVALSHA and loads it on
// NOSCRIPT (a restarted or new Redis).
//
//go:embed lua/*.lua
var luaFiles embed.FS

var (
	reserveScript   = script("reserve.lua")
	releaseScript   = script("release.lua")
	applyScript     = script("apply.lua")
	applyManyScript = script("applymany.lua")
	cancelScript    = script("cancel.lua")
	holdScript      = script("hold.lua")
	endProbeScript  = script("endprobe.lua")
	inspectScript   = script("inspect.lua")
)

func script(entry string) *redis.Script {
	lib, err := luaFiles.ReadFile("lua/key.lua")
	if err != nil {
		panic(err) // embedded: cannot happen
	}
	src, err := luaFiles.ReadFile("lua/" + entry)
	if err != nil {
		panic(err)
	}
	return redis.NewScript(string(lib) + "\n" + string(src))
}
