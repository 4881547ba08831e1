package proxy_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// rawConn is a client connection to the proxy, plain or inside an
// intercepted tunnel, on which a test writes bytes of its choice.
type rawConn struct {
	net.Conn
	br *bufio.Reader
}

// dialRaw connects to the proxy. With target set, it opens a CONNECT
// tunnel to target and a TLS session in it that trusts the proxy's CA.
// The whole connection must be done within 10 seconds.
func dialRaw(t *testing.T, p *running, target string) *rawConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", p.url.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	rc := &rawConn{Conn: conn, br: bufio.NewReader(conn)}
	if target == "" {
		return rc
	}
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %v %v", target, resp, err)
	}
	host, _, _ := net.SplitHostPort(target)
	tc := tls.Client(conn, &tls.Config{RootCAs: p.caPool, ServerName: host})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS inside the tunnel: %v", err)
	}
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{Conn: tc, br: bufio.NewReader(tc)}
}

// read reads one answer (to a request of method) and its body.
func (c *rawConn) read(method string) (*http.Response, string, error) {
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		return nil, "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body), err
}

// closed reports whether the proxy closed the connection: no more bytes
// come, and the end comes before the deadline.
func (c *rawConn) closed() error {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	extra, err := io.ReadAll(c.br)
	var ne net.Error
	switch {
	case len(extra) > 0:
		return fmt.Errorf("the proxy sent more after its answer: %q", extra)
	case errors.As(err, &ne) && ne.Timeout():
		return errors.New("the connection stayed open")
	}
	return nil // io.EOF, or a reset
}
