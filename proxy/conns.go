package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Client connections and tunnels, bounded. Every connection the proxy
// accepts counts against resources.max_client_conns until it is closed,
// through its life as an HTTP connection, a tunnel or an intercepted
// connection. At the bound the connection that has been idle the longest
// (between requests, or before its first) is closed to make room: a flood
// of idle connections cannot lock legitimate clients out, nor run the
// process out of file descriptors. Tunnels (CONNECT, intercepted or not,
// and upgraded connections) count against resources.max_tunnels too.
//
// The proxy never serves itself: a connection it dials whose peer is one
// of its own listeners (a CONNECT to its own port, a connect_to naming
// it) is refused with 508 PROXY_LOOP, and a client connection that is one
// of the proxy's own outgoing connections seen from the other end (a
// listener whose address the proxy does not know, such as a socket handed
// over by a supervisor) is closed when its first bytes come.

// errProxyLoop: the proxy dialled itself.
var errProxyLoop = errors.New("the destination is this proxy itself")

// connLimiter tracks client connections and the proxy's own outgoing ones.
type connLimiter struct {
	s   *Server
	max int

	mu        sync.Mutex
	conns     map[*trackedConn]struct{}
	listeners []net.Addr
	seq       uint64 // counts state changes: orders connections by the time of their last

	own sync.Map // "local remote" addresses of each open outgoing connection
}

func newConnLimiter(s *Server, max int) *connLimiter {
	return &connLimiter{s: s, max: max, conns: map[*trackedConn]struct{}{}}
}

// isOwn reports (and logs) a client connection that is one of the
// proxy's own outgoing connections seen from the other end.
func (l *connLimiter) isOwn(c net.Conn) bool {
	if _, own := l.own.Load(c.RemoteAddr().String() + " " + c.LocalAddr().String()); !own {
		return false
	}
	l.s.log.Warn("connection from the proxy itself closed", zap.String("from", c.RemoteAddr().String()),
		zap.String("reason", "the proxy dialled its own listener (a CONNECT or connect_to naming it)"))
	return true
}

// trackedConn is an accepted client connection.
type trackedConn struct {
	net.Conn
	l       *connLimiter
	checked atomic.Bool // its first bytes came, and it is not the proxy's own
	once    sync.Once
	state   http.ConnState // under l.mu: StateNew or StateIdle may be closed to make room
	since   uint64         // under l.mu: when it entered state (connLimiter.seq)
}

// Read checks, when the first bytes come, that the connection is not the
// proxy's own: a connection can be accepted before its dialer has noted
// its addresses, but the dialer sends nothing before.
func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.checked.Load() {
		c.checked.Store(true)
		if c.l.isOwn(c.Conn) {
			c.Close()
			return 0, net.ErrClosed
		}
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.l.remove(c) })
	return c.Conn.Close()
}

// CloseWrite half-closes the connection when it can: net/http does so
// before closing a connection after an error answer, so that the client
// reads the answer rather than a reset.
func (c *trackedConn) CloseWrite() error { return closeWrite(c.Conn) }

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (l *connLimiter) remove(c *trackedConn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// count is how many client connections are open.
func (l *connLimiter) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// listen wraps ln: its connections are tracked and bounded.
func (l *connLimiter) listen(ln net.Listener) net.Listener {
	l.mu.Lock()
	l.listeners = append(l.listeners, ln.Addr())
	l.mu.Unlock()
	return &limitListener{Listener: ln, l: l}
}

type limitListener struct {
	net.Listener
	l *connLimiter
}

func (ln *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc := ln.l.admit(c); tc != nil {
			return tc, nil
		}
	}
}

// admit tracks c, closing the longest-idle connection at the bound. With
// none idle, it refuses c: a short 503, then close.
func (l *connLimiter) admit(c net.Conn) *trackedConn {
	l.mu.Lock()
	var victim *trackedConn
	if len(l.conns) >= l.max {
		for tc := range l.conns {
			if (tc.state == http.StateNew || tc.state == http.StateIdle) && (victim == nil || tc.since < victim.since) {
				victim = tc
			}
		}
		if victim == nil {
			l.mu.Unlock()
			l.s.limits.conns.hit()
			go refuseConn(c)
			return nil
		}
		delete(l.conns, victim)
	}
	l.seq++
	tc := &trackedConn{Conn: c, l: l, state: http.StateNew, since: l.seq}
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	if victim != nil {
		l.s.limits.conns.hit()
		victim.Conn.Close() // its server sees the close and ends
	}
	return tc
}

// refuseConn tells a client the proxy has no room for its connection.
func refuseConn(c net.Conn) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: "+
		strconv.Itoa(len(refusedConnBody))+"\r\n\r\n"+refusedConnBody)
	c.Close()
}

const refusedConnBody = `{"error":{"code":"TOO_MANY_CONNECTIONS","message":"the proxy holds as many client connections as it may (resources.max_client_conns), none of them idle","source":"proxy"}}` + "\n"

// setState records the state of a client connection as the outer server
// reports it.
func (l *connLimiter) setState(c net.Conn, st http.ConnState) {
	if tc, ok := c.(*trackedConn); ok {
		l.mark(tc, st)
	}
}

// setInnerState records the state of an intercepted connection as the
// inner server reports it: an intercepted connection between requests is
// idle like any other.
func (l *connLimiter) setInnerState(c net.Conn, st http.ConnState) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	cc, ok := tc.NetConn().(*clientConn)
	if !ok {
		return
	}
	if t, ok := cc.Conn.(*trackedConn); ok {
		l.mark(t, st)
	}
}

func (l *connLimiter) mark(tc *trackedConn, st http.ConnState) {
	if st == http.StateClosed {
		return // Close removes it
	}
	l.mu.Lock()
	l.seq++
	tc.state, tc.since = st, l.seq
	l.mu.Unlock()
}

// dialer wraps dial: a connection whose peer is one of the proxy's
// listeners is refused with errProxyLoop, and the addresses of every other
// are remembered until it closes: a client connection with the same two
// addresses, seen from the other end, is the proxy's own (see
// trackedConn.Read). Both addresses, since a local port may serve
// connections to different peers at once.
func (l *connLimiter) dialer(dial func(context.Context, string, string) (net.Conn, error)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if l.isListener(c.LocalAddr(), c.RemoteAddr()) {
			c.Close()
			return nil, &net.OpError{Op: "dial", Net: network, Addr: c.RemoteAddr(), Err: errProxyLoop}
		}
		oc := &ownConn{Conn: c, l: l, addrs: c.LocalAddr().String() + " " + c.RemoteAddr().String()}
		l.own.Store(oc.addrs, struct{}{})
		return oc, nil
	}
}

// isListener reports whether remote, the peer of a connection from local,
// is one of the proxy's listeners: the same address, or the same port of
// a listener on every address when remote is a loopback address or local's
// own (a connection to this host).
func (l *connLimiter) isListener(local, remote net.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, rok := remote.(*net.TCPAddr)
	lo, lok := local.(*net.TCPAddr)
	for _, a := range l.listeners {
		if a.String() == remote.String() {
			return true
		}
		ta, ok := a.(*net.TCPAddr)
		if !ok || !rok || ta.Port != r.Port {
			continue
		}
		if ta.IP.Equal(r.IP) || ta.IP.IsUnspecified() && (r.IP.IsLoopback() || lok && lo.IP.Equal(r.IP)) {
			return true
		}
	}
	return false
}

// ownConn is a connection the proxy dialled.
type ownConn struct {
	net.Conn
	l     *connLimiter
	addrs string // local and remote
	once  sync.Once
}

func (c *ownConn) Close() error {
	c.once.Do(func() { c.l.own.Delete(c.addrs) })
	return c.Conn.Close()
}

// tunnelSlot takes one of resources.max_tunnels; release gives it back
// (at most once). ok is false, and nothing is taken, at the bound.
func (s *Server) tunnelSlot() (release func(), ok bool) {
	if s.tunnelCount.Add(1) > int64(s.resources.MaxTunnels) {
		s.tunnelCount.Add(-1)
		s.limits.tunnels.hit()
		return nil, false
	}
	var once sync.Once
	return func() { once.Do(func() { s.tunnelCount.Add(-1) }) }, true
}

// tunnelsOpen is how many tunnel slots are taken.
func (s *Server) tunnelsOpen() int64 { return s.tunnelCount.Load() }

// connState calls each hook in turn.
func (s *Server) connState(hooks ...func(net.Conn, http.ConnState)) func(net.Conn, http.ConnState) {
	return func(c net.Conn, st http.ConnState) {
		for _, h := range hooks {
			h(c, st)
		}
	}
}
