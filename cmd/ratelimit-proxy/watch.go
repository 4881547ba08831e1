package main

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// configSettle is how long the configuration's directory must be quiet
// before a change is reported: an editor's save, or a Kubernetes ConfigMap
// update, is a burst of events (write a temporary file, rename it over
// the old one, swap a symlink).
const configSettle = 300 * time.Millisecond

// watchConfig reports changes of the content of the file at path. It
// watches the file's directory, not the file, since editors and Kubernetes
// replace the file rather than write it, and reports a change once the
// directory settled and the content differs from what it last saw. Call
// stop to end it. When the directory cannot be watched it logs why and
// reports nothing: SIGHUP still reloads.
func watchConfig(path string, log *zap.Logger) (changes <-chan struct{}, stop func()) {
	out := make(chan struct{}, 1)
	w, err := fsnotify.NewWatcher()
	if err == nil {
		err = w.Add(filepath.Dir(path))
		if err != nil {
			w.Close()
		}
	}
	if err != nil {
		log.Warn("not watching the configuration file: reload it with SIGHUP", zap.String("path", path), zap.Error(err))
		return out, func() {}
	}
	last := contentSum(path)
	done := make(chan struct{})
	go func() {
		settle := time.NewTimer(time.Hour)
		settle.Stop()
		for {
			select {
			case <-done:
				settle.Stop()
				return
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				settle.Reset(configSettle)
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("watching the configuration file", zap.String("path", path), zap.Error(err))
			case <-settle.C:
				if sum := contentSum(path); sum != last {
					last = sum
					select {
					case out <- struct{}{}:
					default: // a reload is already due
					}
				}
			}
		}
	}()
	return out, func() { close(done); w.Close() }
}

// contentSum is the SHA-256 of the file's content; a file that cannot be
// read has the sum of nothing, so that it counts as a change once.
func contentSum(path string) [sha256.Size]byte {
	data, err := os.ReadFile(path)
	if err != nil {
		return [sha256.Size]byte{}
	}
	return sha256.Sum256(data)
}
