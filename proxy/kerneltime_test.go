package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The recorder's handler reads its clock only when the Go scheduler runs
// it, which on a loaded machine can be long after the request arrived. What
// the proxy promises is about when requests reach the upstream, so the
// recorder asks the kernel: with SO_TIMESTAMPNS every read returns the time
// at which its first byte entered the network stack (on loopback, while the
// proxy's write was still in its system call), whatever the scheduler does
// afterwards.

// The kernel stamps a packet as it arrives only while some socket of the
// machine asks for timestamps (it switches stamping off when the last such
// socket closes, and on again with a delay). A packet that arrived while it
// was off is stamped when it is read, which is the late time this harness
// exists to avoid: so the test binary keeps one socket asking for
// timestamps open for its whole life, from before any recorder starts.
var keepStamping = func() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1); err != nil {
		syscall.Close(fd)
		return err
	}
	time.Sleep(50 * time.Millisecond) // the kernel switches stamping on asynchronously
	return nil                        // fd stays open until the process exits
}()

// stampListener accepts connections that report the kernel receive time
// of the bytes they read.
type stampListener struct{ net.Listener }

func (l stampListener) Accept() (net.Conn, error) {
	if keepStamping != nil {
		return nil, fmt.Errorf("kernel receive timestamps: %w", keepStamping)
	}
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		c.Close()
		return nil, errors.Join(err, serr)
	}
	return &stampConn{TCPConn: tc, raw: raw}, nil
}

// stampConn is a TCP connection whose reads record the kernel's receive
// time of their first byte.
type stampConn struct {
	*net.TCPConn
	raw  syscall.RawConn
	last atomic.Int64 // Unix nanoseconds of the latest read's first byte
}

func (c *stampConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	oob := make([]byte, syscall.CmsgSpace(int(unsafe.Sizeof(syscall.Timespec{}))))
	var n, oobn int
	var rerr error
	err := c.raw.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = syscall.Recvmsg(int(fd), p, oob, 0)
		return rerr != syscall.EAGAIN
	})
	if err != nil {
		return 0, err // a deadline, or the connection closed
	}
	if rerr != nil {
		return 0, rerr
	}
	if n == 0 {
		return 0, io.EOF
	}
	var stamp int64 // zero: this read came without a timestamp
	if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if m.Header.Level == syscall.SOL_SOCKET && m.Header.Type == syscall.SO_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(syscall.Timespec{})) {
				stamp = (*syscall.Timespec)(unsafe.Pointer(&m.Data[0])).Nano()
			}
		}
	}
	c.last.Store(stamp)
	return n, nil
}

// received returns the kernel time of the latest read, or the zero time.
func (c *stampConn) received() time.Time {
	if ns := c.last.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

type stampKey struct{}

// stampContext remembers the connection of a request for the handler.
func stampContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, stampKey{}, c)
}

// kernelReceived returns when the request of ctx reached the machine, as
// the kernel saw it; ok is false when the connection does not tell.
func kernelReceived(ctx context.Context) (time.Time, bool) {
	c, _ := ctx.Value(stampKey{}).(net.Conn)
	for c != nil {
		switch cc := c.(type) {
		case *stampConn:
			at := cc.received()
			return at, !at.IsZero()
		case interface{ NetConn() net.Conn }: // *tls.Conn
			c = cc.NetConn()
		default:
			return time.Time{}, false
		}
	}
	return time.Time{}, false
}
