package main

import (
	"github.com/ratelimit-proxy/ratelimit-proxy/config"
)

// connsPerFile: a client connection may take two files (itself and, for
// an untouched tunnel, the upstream's), so at most half of the open-file
// limit goes to client connections.
const connsPerFile = 2

// fitClientConns lowers resources.max_client_conns to half the process's
// open-file limit when that is lower (the rest is for upstream
// connections, the listeners and the logs): a flood of connections must
// meet the proxy's bound, which closes idle ones, before the process runs
// out of files, which fails every accept. It returns the configured value
// when it lowered it, else 0.
func fitClientConns(r *config.Resources, openFiles uint64) (was int) {
	if openFiles == 0 {
		return 0 // unknown
	}
	fit := max(int(min(openFiles/connsPerFile, 1<<20)), 16)
	if r.MaxClientConns <= fit {
		return 0
	}
	was, r.MaxClientConns = r.MaxClientConns, fit
	return was
}
