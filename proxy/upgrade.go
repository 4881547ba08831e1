package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Protocol upgrades (WebSocket) go through httputil.ReverseProxy, which
// splices the client's connection and the upstream's once the upstream
// answers 101. An upgraded connection is a tunnel like any other: it takes
// one of resources.max_tunnels, Shutdown closes it, and it is closed after
// timeouts.tunnel_idle without traffic either way.

type idleGuardKey struct{}

// forwardUpgrade forwards a request that asks to switch protocols.
func (s *Server) forwardUpgrade(w http.ResponseWriter, r *http.Request, x *exchange) {
	release, ok := s.tunnelSlot()
	if !ok {
		x.decision = decisionCapacity
		x.err = "resources.max_tunnels reached"
		s.writeError(w, x, http.StatusServiceUnavailable, "TOO_MANY_TUNNELS",
			"the proxy holds as many tunnels as it may (resources.max_tunnels); retry later")
		return
	}
	defer release()
	guard := &idleGuard{idle: time.Duration(s.timeouts.TunnelIdle)}
	defer guard.stop()
	r = r.WithContext(context.WithValue(r.Context(), idleGuardKey{}, guard))
	s.upgrader.ServeHTTP(&upgradeWriter{ResponseWriter: w, s: s, guard: guard}, r)
}

// modifyUpgradeResponse is the upgrader's ModifyResponse: a 101 answer's
// connection joins the idle guard; any other answer's body is watched
// like a forwarded one, a failure to read it logged as an error.
func (s *Server) modifyUpgradeResponse(resp *http.Response) error {
	x, _ := resp.Request.Context().Value(exchangeKey{}).(*exchange)
	if x != nil {
		x.status = resp.StatusCode
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if g, ok := resp.Request.Context().Value(idleGuardKey{}).(*idleGuard); ok {
			if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
				gb := &guardedRWC{ReadWriteCloser: rwc, g: g}
				g.add(gb)
				resp.Body = gb
			}
		}
		return nil
	}
	s.watchBody(resp)
	if ub, ok := resp.Body.(*upstreamBody); ok && x != nil {
		ub.onError = func(err error) {
			x.decision = decisionError
			x.err = upstreamBodyError{err}.Error()
		}
	}
	return nil
}

// upgradeWriter gives the upgrader the client's connection wrapped: its
// traffic feeds the idle guard, and it is tracked as a tunnel.
type upgradeWriter struct {
	http.ResponseWriter
	s     *Server
	guard *idleGuard
}

func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	gc := &guardedConn{Conn: c, g: w.guard}
	if !w.s.trackTunnel(gc) {
		c.Close()
		return nil, nil, errShuttingDown
	}
	gc.untrack = func() { w.s.untrackTunnel(gc) }
	w.guard.add(gc)
	return gc, brw, nil
}

func (w *upgradeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// trackTunnel registers a hijacked connection for Shutdown, unless the
// server is closing.
func (s *Server) trackTunnel(c net.Conn) bool {
	s.tunnelMu.Lock()
	defer s.tunnelMu.Unlock()
	if s.closing {
		return false
	}
	s.tunnels.Add(1)
	s.tunnelConns[c] = struct{}{}
	return true
}

func (s *Server) untrackTunnel(c net.Conn) {
	s.tunnelMu.Lock()
	delete(s.tunnelConns, c)
	s.tunnelMu.Unlock()
	s.tunnels.Done()
}

// idleGuard closes the connections of one tunnel once no byte has gone
// either way for idle. Its clock starts with the first connection added.
type idleGuard struct {
	idle time.Duration
	last atomic.Int64 // time of the last traffic, in Unix nanoseconds

	mu      sync.Mutex
	conns   []io.Closer
	timer   *time.Timer
	stopped bool
}

func (g *idleGuard) touch() { g.last.Store(time.Now().UnixNano()) }

// add guards c; after stop, it closes c.
func (g *idleGuard) add(c io.Closer) {
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		c.Close()
		return
	}
	g.conns = append(g.conns, c)
	if g.timer == nil {
		g.touch()
		g.timer = time.AfterFunc(g.idle, g.check)
	}
	g.mu.Unlock()
}

func (g *idleGuard) check() {
	quiet := time.Since(time.Unix(0, g.last.Load()))
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		return
	}
	if quiet < g.idle {
		g.timer.Reset(g.idle - quiet)
		g.mu.Unlock()
		return
	}
	g.mu.Unlock()
	g.stop()
}

// stop closes every guarded connection.
func (g *idleGuard) stop() {
	g.mu.Lock()
	g.stopped = true
	if g.timer != nil {
		g.timer.Stop()
	}
	conns := g.conns
	g.conns = nil
	g.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// guardedConn is the client side of an upgraded connection.
type guardedConn struct {
	net.Conn
	g       *idleGuard
	untrack func()
	once    sync.Once
}

func (c *guardedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.g.touch()
	}
	return n, err
}

func (c *guardedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.g.touch()
	}
	return n, err
}

// CloseWrite passes the upstream's end of the stream on to the client.
func (c *guardedConn) CloseWrite() error { return closeWrite(c.Conn) }

func (c *guardedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.untrack != nil {
			c.untrack()
		}
	})
	return err
}

// guardedRWC is the upstream side of an upgraded connection.
type guardedRWC struct {
	io.ReadWriteCloser
	g *idleGuard
}

func (c *guardedRWC) Read(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Read(p)
	if n > 0 {
		c.g.touch()
	}
	return n, err
}

func (c *guardedRWC) Write(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Write(p)
	if n > 0 {
		c.g.touch()
	}
	return n, err
}
