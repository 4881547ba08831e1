package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
)

// serveConnect answers a CONNECT: a host with a policy is intercepted (TLS
// terminated with a leaf certificate of the proxy's CA, its requests served
// by the inner server), any other host is tunnelled untouched or refused.
// A refused CONNECT closes the connection after its answer; a CONNECT
// inside an intercepted tunnel is refused.
func (s *Server) serveConnect(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	target, valid := connectTarget(r.Host)
	_, nested := r.Context().Value(interceptKey{}).(string)
	policy := s.policy.Load()
	action := decision.Intercept
	reason := "" // why the CONNECT failed or was refused, for the record only
	var upstreamConn net.Conn
	release, slot := s.tunnelSlot() // handed to the tunnel's client connection, which gives it back when closed
	defer func() {
		if release != nil {
			release()
		}
	}()
	switch {
	case !slot:
		action, reason = decisionCapacity, "resources.max_tunnels reached"
		refuse(w, http.StatusServiceUnavailable, "TOO_MANY_TUNNELS", "the proxy holds as many tunnels as it may (resources.max_tunnels); retry later")
	case nested:
		action, reason, target = decisionDenied, "CONNECT inside an intercepted tunnel", r.Host
		refuse(w, http.StatusMethodNotAllowed, "CONNECT_IN_TUNNEL", "a CONNECT inside an intercepted tunnel is not allowed")
	case !valid:
		action, reason, target = decisionError, "not a host:port", r.Host
		refuse(w, http.StatusBadRequest, "BAD_CONNECT_TARGET", "CONNECT needs host:port, with a port from 1 to 65535")
	case policy.routes.route(target, "443") != nil:
		target = canonicalHostPort(target) // the leaf certificate and the Host check use it
	case policy.unknownHosts == denyUnknown:
		action = decisionDenied
		refuse(w, http.StatusForbidden, "HOST_NOT_ALLOWED", "no upstream policy for this host, and unknown_hosts is deny")
	case policy.reachedThrough(target, "443") != nil:
		// The address of an upstream's connect_to: a tunnel there would
		// reach the upstream uncounted.
		action, reason = decisionDenied, "the address is a connect_to of an upstream"
		refuse(w, http.StatusMisdirectedRequest, "MISDIRECTED_REQUEST",
			"this address is where the proxy reaches one of its upstreams: CONNECT to the upstream's host name, so that it is counted")
	default:
		action = decision.Tunnel
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(s.timeouts.Dial))
		c, err := s.dial(withEgressScope(ctx, target, policy.egress), "tcp", target)
		cancel()
		if err != nil {
			action, reason = decisionError, err.Error() // the raw error for the log only
			f := classifyFailure(err)
			if f.code == codeEgressDenied {
				action = decisionDenied
			}
			refuse(w, f.status, f.code, f.message)
			break
		}
		upstreamConn = c
	}
	rec := decision.Record{Start: start, Duration: time.Since(start), Method: http.MethodConnect,
		Host: s.logged(target), Decision: action, Error: reason}
	if action == decision.Intercept {
		rec.Upstream = policy.routes.route(target, "443").name
	}
	s.observers.Observe(rec)
	if action != decision.Intercept && action != decision.Tunnel {
		return
	}

	hj, ok := w.(http.Hijacker)
	if !ok {
		if upstreamConn != nil {
			upstreamConn.Close()
		}
		http.Error(w, "CONNECT needs HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		if upstreamConn != nil {
			upstreamConn.Close()
		}
		return
	}
	conn.SetDeadline(time.Time{}) // the outer server's deadlines no longer apply
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
		conn.Close()
		if upstreamConn != nil {
			upstreamConn.Close()
		}
		return
	}
	// Bytes the client sent right after its CONNECT (a TLS ClientHello,
	// say) may already sit in rw.Reader: clientConn reads them first.
	client := &clientConn{Conn: conn, buf: rw.Reader, target: target, release: release}
	release = nil
	if upstreamConn == nil {
		s.innerLn.push(client)
		return
	}
	s.tunnel(&sniCheck{Conn: client, s: s, policy: policy, target: target}, upstreamConn)
}

// tunnel copies bytes both ways until either side closes or the tunnel has
// been idle for the configured time. Tunnels are tracked, so Shutdown can
// close them.
func (s *Server) tunnel(client, upstream net.Conn) {
	s.tunnelMu.Lock()
	if s.closing {
		s.tunnelMu.Unlock()
		client.Close()
		upstream.Close()
		return
	}
	s.tunnels.Add(1)
	s.openTunnels.Add(1)
	s.tunnelConns[client] = struct{}{}
	s.tunnelConns[upstream] = struct{}{}
	s.tunnelMu.Unlock()
	go func() {
		defer s.tunnels.Done()
		defer s.openTunnels.Add(-1)
		idle := time.Duration(s.timeouts.TunnelIdle)
		var once sync.Once
		closeBoth := func() { once.Do(func() { client.Close(); upstream.Close() }) }
		// Idle means no traffic either way: a one-way stream stays open.
		var lastActive atomic.Int64
		lastActive.Store(time.Now().UnixNano())
		var wg sync.WaitGroup
		wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for {
				src.SetReadDeadline(time.Now().Add(idle))
				n, err := src.Read(buf)
				if n > 0 {
					lastActive.Store(time.Now().UnixNano())
					dst.SetWriteDeadline(time.Now().Add(idle))
					if _, werr := dst.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() && time.Since(time.Unix(0, lastActive.Load())) < idle {
						continue // the other direction is busy
					}
					break
				}
			}
			closeBoth()
		}
		go pipe(upstream, client)
		pipe(client, upstream)
		wg.Wait()
		s.tunnelMu.Lock()
		delete(s.tunnelConns, client)
		delete(s.tunnelConns, upstream)
		s.tunnelMu.Unlock()
	}()
}

// clientConn is a hijacked client connection: it first returns the bytes
// the HTTP server had already buffered, then reads the socket directly.
type clientConn struct {
	net.Conn
	buf     *bufio.Reader
	target  string // the CONNECT authority, host:port
	release func() // gives the tunnel's slot back
	once    sync.Once
}

func (c *clientConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func (c *clientConn) Read(p []byte) (int, error) {
	if c.buf != nil {
		if c.buf.Buffered() > 0 {
			return c.buf.Read(p)
		}
		c.buf = nil
	}
	return c.Conn.Read(p)
}

type interceptKey struct{}

// interceptedContext tells the handler which CONNECT authority an
// intercepted connection was opened for.
func interceptedContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		if cc, ok := tc.NetConn().(*clientConn); ok {
			return context.WithValue(ctx, interceptKey{}, cc.target)
		}
	}
	return ctx
}

// connListener is a net.Listener fed with connections by push.
type connListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnListener() *connListener {
	return &connListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return interceptAddr{} }

type interceptAddr struct{}

func (interceptAddr) Network() string { return "intercept" }
func (interceptAddr) String() string  { return "intercepted-connections" }
