package proxy

import (
	"net"
	"sync"
	"time"
)

// sentConn is an upstream connection that tells when bytes really left.
//
// net/http calls a client trace's WroteRequest when the request has been
// written into the connection's buffer, before that buffer is flushed: on a
// loaded machine the flush can come tens of milliseconds later, and a send
// time read at WroteRequest would be earlier than the upstream's arrival
// time, which is what the quota promise is about. So the send time of a
// request is the end of the first Write on its connection that began after
// WroteRequest: the flush of what the request left in the buffer, or a
// later write, which is later still (never too early).
type sentConn struct {
	net.Conn
	mu      sync.Mutex
	waiters []func(time.Time) // called when the next Write ends
}

// afterNextWrite calls f with the time at which the next Write to begin
// on c ends (whether it succeeded or not).
func (c *sentConn) afterNextWrite(f func(time.Time)) {
	c.mu.Lock()
	c.waiters = append(c.waiters, f)
	c.mu.Unlock()
}

func (c *sentConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	waiters := c.waiters
	c.waiters = nil
	c.mu.Unlock()
	n, err := c.Conn.Write(p)
	if len(waiters) > 0 {
		now := time.Now()
		for _, f := range waiters {
			f(now)
		}
	}
	return n, err
}

// findSentConn returns the sentConn under c (a TLS connection wraps it),
// or nil.
func findSentConn(c net.Conn) *sentConn {
	for c != nil {
		switch cc := c.(type) {
		case *sentConn:
			return cc
		case interface{ NetConn() net.Conn }:
			c = cc.NetConn()
		default:
			return nil
		}
	}
	return nil
}
