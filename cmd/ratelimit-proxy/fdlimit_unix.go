//go:build unix

package main

import "syscall"

// openFileLimit is the process's soft limit on open files (Go raises it to
// the hard limit at start), or 0 when unknown or unlimited.
func openFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<40 {
		return 0
	}
	return rl.Cur
}
