package main

import (
	"testing"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
)

// TestClientConnsFitTheOpenFileLimit: under a 1024-file limit (issue 12
// row 4: 1100 idle connections failed every accept), the default bound of
// 4096 connections is lowered to 512, so the proxy closes idle connections
// before the process runs out of files; a bound that fits is kept.
func TestClientConnsFitTheOpenFileLimit(t *testing.T) {
	for _, tt := range []struct {
		conns     int
		openFiles uint64
		want, was int
	}{
		{4096, 1024, 512, 4096},
		{4096, 1 << 20, 4096, 0},
		{100, 1024, 100, 0},
		{4096, 0, 4096, 0}, // unknown limit
		{4096, 10, 16, 4096},
	} {
		r := config.Resources{MaxClientConns: tt.conns}
		if was := fitClientConns(&r, tt.openFiles); r.MaxClientConns != tt.want || was != tt.was {
			t.Errorf("%d connections under %d files: %d (was %d), want %d (was %d)", tt.conns, tt.openFiles, r.MaxClientConns, was, tt.want, tt.was)
		}
	}
}
