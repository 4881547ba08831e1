package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Bodies both ways, bounded in time and memory. A request body is read in
// full before admission when it is small enough (throttle.retry.max_body)
// and fits the budget of resources.max_buffered_bytes: a slow client then
// spends its own time, never a slot of its key. A larger body streams
// upstream after admission, counted against its key's windows until its
// last byte leaves (quota.Request.Transit), and cut at
// timeouts.client_body. A response body that stalls for
// timeouts.upstream_body_idle is cut, and its headers reach the client
// without waiting for it.

// errBodyTimeout: the client did not send its request body in time.
var errBodyTimeout = errors.New("the request body did not arrive within timeouts.client_body")

// errUpstreamIdle: the upstream stopped sending its response body.
var errUpstreamIdle = errors.New("no byte of the response body came within timeouts.upstream_body_idle")

// transitSlack is added to timeouts.client_body in the transit a
// streaming request tells the store: the time between the store's release
// and the start of the proxy's clock, and between the clock's end and the
// settling of the cut request.
const transitSlack = time.Second

// headerFlushDelay is how long a response's headers, and the bytes of its
// body the client was given, may wait for the next bytes before they are
// sent on their own. Headers and body leave in one write when the body
// follows at once (the common case); a body that stalls holds nothing
// back.
const headerFlushDelay = 10 * time.Millisecond

// byteBudget is a number of bytes shared by every request.
type byteBudget struct {
	max  int64
	used atomic.Int64
}

// take reserves n bytes, or nothing when they do not fit.
func (b *byteBudget) take(n int64) bool {
	if b.used.Add(n) > b.max {
		b.used.Add(-n)
		return false
	}
	return true
}

// give returns n bytes.
func (b *byteBudget) give(n int64) { b.used.Add(-n) }

// bodyClock bounds the time a request body may take to arrive: from its
// start (the first read, or the request's release when the body streams
// upstream: see start) to its end. When the time is up, it ends the read
// that waits (a read deadline on the client's connection) and the sending
// of the request (cancel), and reads fail with errBodyTimeout; the
// connection is then closed after the answer. The clock stops at the
// body's end or at stop, whichever comes first: it never touches a
// connection that went on to its next request.
type bodyClock struct {
	body   io.ReadCloser
	limit  time.Duration
	rc     *http.ResponseController
	cancel context.CancelCauseFunc // stops the sending; nil when none

	mu      sync.Mutex
	timer   *time.Timer
	done    bool // read to its end, or stopped
	expired bool
}

// start starts the clock unless it runs already.
func (b *bodyClock) start() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.timer == nil && !b.done && !b.expired {
		b.timer = time.AfterFunc(b.limit, b.expire)
	}
}

func (b *bodyClock) expire() {
	b.mu.Lock()
	if b.done {
		b.mu.Unlock()
		return
	}
	b.expired = true
	b.mu.Unlock()
	b.rc.SetReadDeadline(time.Now()) // a Read waiting for the client returns
	if b.cancel != nil {
		b.cancel(errBodyTimeout)
	}
}

// lingerAfterTimeout is how long the proxy keeps reading (and dropping) a
// timed-out request body after its 408 has left, as net/http does before
// it closes a connection whose client may still be writing: a close with
// unread bytes resets the connection, and the client, failing its write,
// would report that instead of the 408 (or lose the 408 from its receive
// buffer). net/http reads at most 256 KiB so.
const lingerAfterTimeout = 500 * time.Millisecond

// linger lets the rest of a timed-out body be read for lingerAfterTimeout
// more: net/http sends the handler's answer, then closes the body (Close
// leaves a timed-out body to it), reading it, and then the connection.
func (b *bodyClock) linger() {
	b.rc.SetReadDeadline(time.Now().Add(lingerAfterTimeout))
}

// stop stops the clock for good.
func (b *bodyClock) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	if b.timer != nil {
		b.timer.Stop()
	}
}

// timedOut reports whether the time ran out before the body's end.
func (b *bodyClock) timedOut() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.expired
}

func (b *bodyClock) Read(p []byte) (int, error) {
	b.start()
	n, err := b.body.Read(p)
	if err != nil {
		b.mu.Lock()
		switch {
		case err == io.EOF && !b.expired:
			b.done = true
			if b.timer != nil {
				b.timer.Stop()
			}
		case b.expired:
			err = errBodyTimeout
		}
		b.mu.Unlock()
	}
	return n, err
}

// Close closes the body, unless its time ran out: net/http closes it then,
// after the answer left (see linger).
func (b *bodyClock) Close() error {
	if b.timedOut() {
		return nil
	}
	return b.body.Close()
}

// bufferBody reads the body of req, a request with a policy, into memory
// before admission when it may: a body whose length is known to be at most
// the upstream's retry.max_body, or of unknown length and found to be,
// and whose bytes fit in the budget of resources.max_buffered_bytes. The
// bytes it holds are added to x.held (given back when the exchange ends).
// It returns the body's replay for a retry when the request may be
// retried (nil otherwise, and always for a body it does not buffer), and
// whether the body streams (it was not buffered). An error means the body
// could not be read: the client went away or was too slow.
func (s *Server) bufferBody(req *http.Request, x *exchange) (replay func() io.ReadCloser, streams bool, err error) {
	up := x.up
	th := &up.throttle
	retryable := th.retry && th.maxAttempts >= 2 && !up.reject && // reject mode never waits, so never retries
		(th.anyMethod || th.methods[req.Method] || th.idemKey && req.Header.Get("Idempotency-Key") != "")
	if req.Body == nil || req.Body == http.NoBody {
		if retryable {
			return func() io.ReadCloser { return http.NoBody }, false, nil
		}
		return nil, false, nil
	}
	limit := int64(th.maxBody)
	if req.ContentLength > limit {
		return nil, true, nil
	}
	var buf bytes.Buffer
	if n := req.ContentLength; n >= 0 {
		if !s.buffered.take(n) {
			s.limits.buffered.hit()
			return nil, true, nil
		}
		x.held += n
		buf.Grow(int(n) + bytes.MinRead)
		if _, err := buf.ReadFrom(req.Body); err != nil { // to EOF: net/http ends the body at its length
			return nil, false, clientBodyError{err}
		}
	} else {
		for {
			chunk := min(32<<10, limit+1-int64(buf.Len()))
			if chunk <= 0 {
				break // longer than max_body
			}
			if !s.buffered.take(chunk) {
				s.limits.buffered.hit()
				break
			}
			x.held += chunk
			m, err := buf.ReadFrom(io.LimitReader(req.Body, chunk))
			if err != nil {
				return nil, false, clientBodyError{err}
			}
			if m < chunk {
				// The body ended (a LimitReader stops early only then).
				s.buffered.give(chunk - m)
				x.held -= chunk - m
				req.Body.Close()
				return s.keepBody(req, buf.Bytes(), retryable), false, nil
			}
		}
		// Too long, or the budget ran out: what was read goes first, the
		// rest streams, once.
		req.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf.Bytes()), req.Body), req.Body}
		return nil, true, nil
	}
	req.Body.Close()
	return s.keepBody(req, buf.Bytes(), retryable), false, nil
}

// keepBody makes data req's body, replayable by the transport (GetBody),
// and returns its replay when the request may be retried. The body needs
// no 100-continue from the upstream: the proxy has it.
func (s *Server) keepBody(req *http.Request, data []byte, retryable bool) func() io.ReadCloser {
	replay := func() io.ReadCloser { return io.NopCloser(bytes.NewReader(data)) }
	req.Body = replay()
	req.GetBody = func() (io.ReadCloser, error) { return replay(), nil }
	req.Header.Del("Expect")
	if !retryable {
		return nil
	}
	return replay
}

// upstreamBody bounds the wait for each read of a response body by
// timeouts.upstream_body_idle: when it passes, the body is closed (ending
// the read that waits) and the read fails with errUpstreamIdle. While a
// read waits, it can send the client what it was given so far, headers
// first (see flushWhileWaiting).
type upstreamBody struct {
	body io.ReadCloser
	idle time.Duration

	mu       sync.Mutex
	timer    *time.Timer
	waiting  bool      // a Read waits
	since    time.Time // when it began
	flush    func()    // sends the client what it was given; nil when not wanted
	flushed  bool      // flush ran during this read
	timedOut bool
	closed   bool

	onError func(error) // when not nil, told of a failed read (not of EOF)
}

// watchBody bounds the reads of resp's body.
func (s *Server) watchBody(resp *http.Response) {
	if resp.Body == nil || resp.Body == http.NoBody || resp.ContentLength == 0 {
		return
	}
	resp.Body = &upstreamBody{body: resp.Body, idle: time.Duration(s.timeouts.UpstreamBodyIdle)}
}

// flushWhileWaiting asks b to call flush when a read has waited
// headerFlushDelay, once per read: the response's headers, and the bytes
// written after them, then reach the client without waiting for the rest.
// flush runs while the caller waits in Read: the caller may use the
// ResponseWriter it flushes only between reads.
func (b *upstreamBody) flushWhileWaiting(flush func()) {
	b.mu.Lock()
	b.flush = flush
	b.mu.Unlock()
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	b.waiting, b.since, b.flushed = true, time.Now(), false
	d := b.idle
	if b.flush != nil {
		d = min(d, headerFlushDelay)
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(d, b.fire)
	} else {
		b.timer.Reset(d)
	}
	b.mu.Unlock()
	n, err := b.body.Read(p)
	b.mu.Lock()
	b.waiting = false
	if b.timedOut && err != nil {
		err = errUpstreamIdle
	}
	b.mu.Unlock()
	if err != nil && err != io.EOF && b.onError != nil {
		b.onError(err)
	}
	return n, err
}

// fire runs when a read may have waited too long.
func (b *upstreamBody) fire() {
	b.mu.Lock()
	if !b.waiting || b.closed {
		b.mu.Unlock()
		return
	}
	if b.flush != nil && !b.flushed {
		b.flushed = true
		b.flush()
	}
	if waited := time.Since(b.since); waited < b.idle {
		b.timer.Reset(b.idle - waited)
		b.mu.Unlock()
		return
	}
	b.timedOut = true
	b.mu.Unlock()
	b.body.Close() // ends the read that waits
}

func (b *upstreamBody) Close() error {
	b.mu.Lock()
	b.closed = true
	if b.timer != nil {
		b.timer.Stop()
	}
	b.mu.Unlock()
	return b.body.Close()
}

// clientBodyError is a failure to read the client's request body before
// admission: the client went away, or sent a body shorter than it said.
type clientBodyError struct{ err error }

func (e clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e clientBodyError) Unwrap() error { return e.err }

// upstreamBodyError is a failure to read the upstream's response body,
// as opposed to a failure to write it to the client.
type upstreamBodyError struct{ err error }

func (e upstreamBodyError) Error() string {
	return "reading the upstream's response body: " + e.err.Error()
}
func (e upstreamBodyError) Unwrap() error { return e.err }
