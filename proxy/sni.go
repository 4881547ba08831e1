package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"

	"go.uber.org/zap"
)

// A tunnel to a host no upstream claims carries bytes the proxy does not
// read. A client could open one to a configured upstream's IP address (or
// to any name that resolves there) and speak TLS to it with the
// upstream's name, evading its quota. sniCheck reads the server name of
// the TLS ClientHello that starts such a tunnel: one that names a
// configured upstream ends the tunnel before any byte of it reaches the
// upstream. (What a client sends inside TLS stays unseen: a request
// fronted with another server name is not caught; unknown_hosts: deny is
// the complete answer.)

// sniCheck is the client side of an untouched tunnel. It is read by one
// goroutine, the tunnel's client-to-upstream copy.
type sniCheck struct {
	net.Conn
	s       *Server
	policy  *Policy
	target  string // the CONNECT authority, host:port
	checked bool
	pending []byte // read while checking, returned first
}

// errMisdirectedTunnel ends a tunnel whose TLS server name names a
// configured upstream.
var errMisdirectedTunnel = errors.New("the TLS server name names a configured upstream")

func (c *sniCheck) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	if c.checked {
		return c.Conn.Read(p)
	}
	c.checked = true
	n, err := c.Conn.Read(p)
	if n == 0 || p[0] != 0x16 { // not a TLS handshake record: nothing to check
		return n, err
	}
	name, read := clientHelloServerName(p[:n], c.Conn)
	_, port, _ := net.SplitHostPort(c.target)
	if up := c.policy.routes.route(net.JoinHostPort(name, port), "443"); name != "" && up != nil {
		c.s.log.Info("tunnel refused", zap.String("host", c.s.logged(c.target)), zap.String("server_name", c.s.logged(name)),
			zap.String("upstream", up.name), zap.String("decision", decisionDenied),
			zap.String("error", "the TLS server name names upstream "+up.name+": CONNECT to its host name, so that it is counted"))
		return 0, errMisdirectedTunnel
	}
	c.pending = read
	return c.Read(p)
}

// clientHelloServerName reads a TLS ClientHello that starts with first
// and continues in rest, with crypto/tls's own parser, and returns the
// server name it asks for ("" for none, or for bytes that are no
// ClientHello) and every byte it read.
func clientHelloServerName(first []byte, rest io.Reader) (string, []byte) {
	rec := &recordingConn{r: io.MultiReader(bytes.NewReader(first), rest)}
	name := ""
	stop := errors.New("stop")
	srv := tls.Server(rec, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name = h.ServerName
		return nil, stop
	}})
	_ = srv.Handshake() // ends with stop once the ClientHello is read, or with what is wrong with it
	return name, rec.read.Bytes()
}

// recordingConn is a net.Conn for a TLS server that only reads the
// ClientHello: it keeps what it reads and discards what is written (the
// alert of the aborted handshake).
type recordingConn struct {
	r    io.Reader
	read bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read.Write(p[:n])
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *recordingConn) Close() error                     { return nil }
func (c *recordingConn) LocalAddr() net.Addr              { return interceptAddr{} }
func (c *recordingConn) RemoteAddr() net.Addr             { return interceptAddr{} }
func (c *recordingConn) SetDeadline(time.Time) error      { return nil }
func (c *recordingConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordingConn) SetWriteDeadline(time.Time) error { return nil }
