package redisstore

import (
	"context"
	"crypto/sha1"
	"embed"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The Lua: key.lua (the decisions of quota/key.go) and one entry per
// decision (reserve.lua, ...). On Redis 7 and later they are one function
// library, loaded once (FUNCTION LOAD, again when Redis answers that a
// function is missing: a restart without persistence, FUNCTION FLUSH, a
// new cluster node) and called with FCALL, so that no call compiles or
// runs the library's definitions again. On an older Redis, or one that
// refuses FUNCTION LOAD, each entry runs as a script with key.lua in front
// of it (EVALSHA, loaded on NOSCRIPT).
//
//go:embed lua/*.lua
var luaFiles embed.FS

// entry is one decision: a function of the library, or the same code as a
// script.
type entry struct {
	fn     string
	script *redis.Script
}

// library is the Lua as a function library and as scripts.
type library struct {
	name string // rlp_ and a hash of the code: releases with other code load their own
	code string // the FUNCTION LOAD source

	reserve, release, applyMany, settle, cancel, hold, endProbe, inspect entry
}

var lib = newLibrary()

func newLibrary() *library {
	read := func(name string) string {
		b, err := luaFiles.ReadFile("lua/" + name)
		if err != nil {
			panic(err) // embedded: cannot happen
		}
		return string(b)
	}
	names := []string{"reserve", "release", "applymany", "settle", "cancel", "hold", "endprobe", "inspect"}
	key := read("key.lua")
	h := sha1.New()
	h.Write([]byte(key))
	for _, n := range names {
		h.Write([]byte(read(n + ".lua")))
	}
	l := &library{name: "rlp_" + hex.EncodeToString(h.Sum(nil))[:16]}
	var code strings.Builder
	code.WriteString("#!lua name=" + l.name + "\n" + key + "\n")
	entries := map[string]*entry{
		"reserve": &l.reserve, "release": &l.release, "applymany": &l.applyMany, "settle": &l.settle,
		"cancel": &l.cancel, "hold": &l.hold, "endprobe": &l.endProbe, "inspect": &l.inspect,
	}
	for _, n := range names {
		src := read(n + ".lua")
		e := entries[n]
		e.fn = l.name + "_" + n
		fmt.Fprintf(&code, "local function entry_%s()\n%s\nend\n", n, src)
		fmt.Fprintf(&code, "redis.register_function('%s', function(keys, args) setup(keys, args) return entry_%s() end)\n", e.fn, n)
		// A script reads the globals KEYS and ARGV before key.lua
		// declares its own.
		e.script = redis.NewScript("local KEYS0, ARGV0 = KEYS, ARGV\n" + key + "\nsetup(KEYS0, ARGV0)\n" + src)
	}
	l.code = code.String()
	return l
}

// run calls e on keys: FCALL, with the library loaded again when Redis
// lost it, or the script.
func (s *Store) run(ctx context.Context, e entry, keys []string, args ...any) *redis.Cmd {
	if !s.functions.Load() {
		return e.script.Run(ctx, s.rdb, keys, args...)
	}
	gen := s.loads.Load()
	cmd := s.rdb.FCall(ctx, e.fn, keys, args...)
	if !functionMissing(cmd.Err()) {
		return cmd
	}
	if err := s.reload(ctx, gen); err != nil {
		cmd.SetErr(err)
		return cmd
	}
	return s.rdb.FCall(ctx, e.fn, keys, args...)
}

// functionMissing reports Redis's answer to FCALL of a function it does
// not hold (the NOSCRIPT of functions).
func functionMissing(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, "Function not found")
}

// reload loads the library again after a call that began at load
// generation gen found a function missing, unless another call loaded it
// since.
func (s *Store) reload(ctx context.Context, gen uint64) error {
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	if s.loads.Load() != gen {
		return nil
	}
	if err := s.loadLibrary(ctx); err != nil {
		return err
	}
	s.loads.Add(1)
	return nil
}

// loadLibrary loads the library on Redis, on every master of a cluster.
func (s *Store) loadLibrary(ctx context.Context) error {
	load := func(ctx context.Context, c redis.Cmdable) error {
		if err := c.FunctionLoadReplace(ctx, lib.code).Err(); err != nil {
			return fmt.Errorf("redisstore: loading the functions: %w", err)
		}
		return nil
	}
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return load(ctx, c) })
	}
	return load(ctx, s.rdb)
}

// chooseFunctions loads the library, or settles for scripts when Redis
// refuses it (a Redis before 7, FUNCTION renamed away or not allowed).
func (s *Store) chooseFunctions(ctx context.Context) error {
	if s.scriptsOnly {
		return nil
	}
	err := s.loadLibrary(ctx)
	switch {
	case err == nil:
		s.functions.Store(true)
	case redis.HasErrorPrefix(err, "unknown command") || redis.HasErrorPrefix(err, "NOPERM"):
		s.functions.Store(false)
	default:
		return err
	}
	return nil
}
