package proxy_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
)

// memNet is an in-memory network for tests that run in a testing/synctest
// bubble: listeners are named by address, and a dial connects a net.Pipe
// to the listener of that address. Pipes block on channels, so the bubble's
// fake clock advances only when every goroutine, client, proxy and
// upstream, is waiting: time in such a test is exact, however loaded the
// machine.
type memNet struct {
	mu        sync.Mutex
	listeners map[string]*memListener
	nextPort  int
}

func newMemNet() *memNet { return &memNet{listeners: map[string]*memListener{}, nextPort: 40000} }

// Listen returns a listener for addr ("host:port").
func (n *memNet) Listen(addr string) *memListener {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := &memListener{net: n, addr: memAddr(addr), conns: make(chan net.Conn), done: make(chan struct{})}
	n.listeners[addr] = l
	return l
}

// Dial connects to the listener of addr; its signature is the one
// http.Transport.DialContext and proxy.Options.Dial take.
func (n *memNet) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	n.mu.Lock()
	l := n.listeners[addr]
	n.nextPort++
	local := memAddr(fmt.Sprintf("10.0.0.1:%d", n.nextPort))
	n.mu.Unlock()
	if l == nil {
		return nil, &net.OpError{Op: "dial", Net: network, Addr: memAddr(addr), Err: syscall.ECONNREFUSED}
	}
	client, server := net.Pipe()
	select {
	case l.conns <- &memConn{Conn: server, local: l.addr, remote: local}:
		return &memConn{Conn: client, local: local, remote: l.addr}, nil
	case <-l.done:
		client.Close()
		server.Close()
		return nil, &net.OpError{Op: "dial", Net: network, Addr: memAddr(addr), Err: syscall.ECONNREFUSED}
	case <-ctx.Done():
		client.Close()
		server.Close()
		return nil, &net.OpError{Op: "dial", Net: network, Addr: memAddr(addr), Err: ctx.Err()}
	}
}

type memListener struct {
	net   *memNet
	addr  memAddr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.net.mu.Lock()
		if l.net.listeners[string(l.addr)] == l {
			delete(l.net.listeners, string(l.addr))
		}
		l.net.mu.Unlock()
	})
	return nil
}

func (l *memListener) Addr() net.Addr { return l.addr }

type memAddr string

func (a memAddr) Network() string { return "tcp" }
func (a memAddr) String() string  { return string(a) }

// memConn is one end of a pipe with the addresses a TCP connection has.
type memConn struct {
	net.Conn
	local, remote net.Addr
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

// latentConn delivers what is written to it after a delay, as a network
// does: Write returns at once, and the bytes of each Write arrive delay()
// later (never before the bytes of an earlier Write).
type latentConn struct {
	net.Conn
	delay  func() time.Duration
	queue  chan latentWrite
	closed chan struct{}
	once   sync.Once
	last   time.Time
	mu     sync.Mutex
}

type latentWrite struct {
	data []byte
	due  time.Time
}

func newLatentConn(c net.Conn, delay func() time.Duration) *latentConn {
	l := &latentConn{Conn: c, delay: delay, queue: make(chan latentWrite, 64), closed: make(chan struct{})}
	go l.deliver()
	return l
}

func (l *latentConn) Write(p []byte) (int, error) {
	l.mu.Lock()
	due := time.Now().Add(l.delay())
	if due.Before(l.last) {
		due = l.last
	}
	l.last = due
	l.mu.Unlock()
	select {
	case l.queue <- latentWrite{data: append([]byte(nil), p...), due: due}:
		return len(p), nil
	case <-l.closed:
		return 0, net.ErrClosed
	}
}

func (l *latentConn) deliver() {
	for {
		select {
		case w := <-l.queue:
			time.Sleep(time.Until(w.due))
			if _, err := l.Conn.Write(w.data); err != nil {
				return
			}
		case <-l.closed:
			return
		}
	}
}

func (l *latentConn) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Conn.Close()
}
