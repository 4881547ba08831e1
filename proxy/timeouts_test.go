package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
)

// Timeouts both ways (issue 12, rows 3, 5 and 9): a slow request body, an
// upstream that stalls after its headers, an idle upgraded connection.

// slowBody is a request body of n bytes written one every gap, as a
// slowloris client sends it. The writing stops when the test ends.
func slowBody(t *testing.T, n int, gap time.Duration) io.Reader {
	pr, pw := io.Pipe()
	stop := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() {
		close(stop)
		pw.CloseWithError(io.ErrClosedPipe)
		<-done
	})
	go func() {
		defer close(done)
		for i := range n {
			select {
			case <-time.After(gap):
			case <-stop:
				return
			}
			if _, err := pw.Write([]byte{byte('a' + i%26)}); err != nil {
				return
			}
		}
		pw.Close()
	}()
	return pr
}

// post sends a POST with body of length n through c and returns the
// answer; it never touches the test.
func post(c *http.Client, rawURL, key string, body io.Reader, n int64, header ...string) (answer, error) {
	req, err := http.NewRequest(http.MethodPost, rawURL, body)
	if err != nil {
		return answer{}, err
	}
	req.ContentLength = n
	req.Header.Set("apikey", key)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, fmt.Errorf("POST %s: %w", rawURL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(data), resp.Header}, err
}

// TestSlowBodyHoldsNoSlot: one 11-byte body sent a byte every 2 s (issue
// 12 row 3: it kept its key from sending for 20 s) is read before
// admission, so the key's other requests pass at the key's rate meanwhile,
// and the slow request goes when its body is in.
func TestSlowBodyHoldsNoSlot(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxy(simUpstreamYAML(rec.addr(), "limits: [1/1s]\nwindow_margin: 10ms\n"))
		c := p.client()
		slow := make(chan error, 1)
		body := slowBody(t, 11, 2*time.Second)
		go func() {
			a, err := post(c, "http://api.test/slow", "k", body, 11)
			if err == nil && a.code != 200 {
				err = fmt.Errorf("slow POST: status %d %s", a.code, a.body)
			}
			slow <- err
		}()
		synctest.Wait() // the slow request's head is in; its body trickles
		start := time.Now()
		for i := range 10 {
			if err := wantStatus(c, "http://api.test/fast", "k", 200); err != nil {
				t.Fatalf("fast request %d: %v", i, err)
			}
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("10 requests of a 1/1s key took %v while a slow body trickled: it held the key's slot", took)
		}
		if err := <-slow; err != nil {
			t.Fatal(err)
		}
		for _, h := range rec.all() {
			if h.path == "/slow" && h.at.Sub(start) < 22*time.Second-time.Millisecond {
				t.Errorf("the slow request reached the upstream %v after the start, before its body was in (22s)", h.at.Sub(start))
			}
		}
	})
}

// TestSlowBodyIsCutAtClientBody: a body that does not arrive within
// timeouts.client_body is answered 408 and its connection closed; the
// upstream never sees it and its key spent nothing.
func TestSlowBodyIsCutAtClientBody(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxy("timeouts: {client_body: 5s}\n" + simUpstreamYAML(rec.addr(), "limits: [1/1m]\n"))
		start := time.Now()
		a, err := post(p.client(), "http://api.test/slow", "k", slowBody(t, 11, 2*time.Second), 11)
		if err != nil {
			t.Fatal(err)
		}
		if a.code != http.StatusRequestTimeout || errorCode(a.body) != "REQUEST_BODY_TIMEOUT" {
			t.Fatalf("slow body: %d %s, want 408 REQUEST_BODY_TIMEOUT", a.code, a.body)
		}
		if took := time.Since(start); took != 5*time.Second {
			t.Errorf("answered after %v, want timeouts.client_body, 5s", took)
		}
		if err := wantStatus(p.client(), "http://api.test/after", "k", 200); err != nil {
			t.Errorf("the key's one request per minute after the cut body: %v (the cut body spent it)", err)
		}
		for _, h := range rec.all() {
			if h.path == "/slow" {
				t.Error("the upstream saw the request whose body never came")
			}
		}
		if !strings.Contains(p.logs.String(), `"error":"the request body did not arrive within timeouts.client_body"`) {
			t.Errorf("the log line does not say why:\n%s", p.logs)
		}
	})
}

// TestTimedOutBodyIsReadWhileThe408Leaves: after a request body's time ran
// out, the proxy sends its 408 at once and goes on reading what the client
// still writes for a moment before it closes the connection. Closed at
// once, the client's next write fails (a reset on TCP) and many clients
// (Go's among them) report that failure instead of the 408.
func TestTimedOutBodyIsReadWhileThe408Leaves(t *testing.T) {
	for _, tt := range []struct {
		name    string
		maxBody int // throttle.retry.max_body: the body is read before admission, or streams
	}{{"read before admission", 1 << 10}, {"streamed upstream", 4}} {
		t.Run(tt.name, func(t *testing.T) {
			runSim(t, func(t *testing.T, s *sim) {
				rec := s.recorder("upstream.test:80", false)
				p := s.proxy("timeouts: {client_body: 5s}\n" + simUpstreamYAML(rec.addr(),
					fmt.Sprintf("limits: [10/1s]\nthrottle: {retry: {max_body: %d}}\n", tt.maxBody)))
				conn, err := s.net.Dial(context.Background(), "tcp", p.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				start := time.Now()
				type reply struct {
					status int
					at     time.Duration
					err    error
				}
				replies := make(chan reply, 1)
				go func() {
					resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
					if err != nil {
						replies <- reply{err: err}
						return
					}
					resp.Body.Close()
					replies <- reply{status: resp.StatusCode, at: time.Since(start)}
				}()
				if _, err := io.WriteString(conn, "POST http://api.test/slow HTTP/1.1\r\nHost: api.test\r\napikey: k\r\nContent-Length: 100\r\n\r\nx"); err != nil {
					t.Fatal(err)
				}
				// one byte every 100 ms, until a write fails
				var failed time.Duration
				for range 99 {
					time.Sleep(100 * time.Millisecond)
					if _, err := conn.Write([]byte("x")); err != nil {
						failed = time.Since(start)
						break
					}
				}
				r := <-replies
				if r.err != nil || r.status != http.StatusRequestTimeout {
					t.Fatalf("the client read %d (%v), want 408", r.status, r.err)
				}
				if r.at != 5*time.Second {
					t.Errorf("the 408 came %v after the request, want timeouts.client_body, 5s", r.at)
				}
				if failed == 0 || failed < r.at+400*time.Millisecond || failed > r.at+time.Second {
					t.Errorf("the client's writes failed %v after the request, the 408 came at %v: want the connection read for about 500ms more, then closed", failed, r.at)
				}
			})
		})
	}
}

// TestStreamedSlowBodyKeepsRetryAfterTrue: a body too large to hold
// (throttle.retry.max_body) streams upstream after admission; while it
// trickles, the refusals of its key name a time at which a retry is
// admitted (issue 12 row 3: they said Retry-After: 1 while the key stayed
// busy for 20 s), and the body is cut at timeouts.client_body.
func TestStreamedSlowBodyKeepsRetryAfterTrue(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxy("timeouts: {client_body: 10s}\n" + simUpstreamYAML(rec.addr(),
			"limits: [1/1s]\nmode: reject\nwindow_margin: 10ms\nthrottle: {retry: {max_body: 4}}\n"))
		c := p.client()
		type result struct {
			a   answer
			err error
		}
		slow := make(chan result, 1)
		slowIn := slowBody(t, 11, 2*time.Second)
		go func() {
			a, err := post(c, "http://api.test/slow", "k", slowIn, 11)
			slow <- result{a, err}
		}()
		synctest.Wait()
		time.Sleep(500 * time.Millisecond)
		code, body, h := get(t, c, "http://api.test/other", "k")
		if code != http.StatusTooManyRequests {
			t.Fatalf("a request while the slow body streams: %d %s, want 429", code, body)
		}
		secs, err := strconv.Atoi(h.Get("Retry-After"))
		if err != nil {
			t.Fatalf("Retry-After %q", h.Get("Retry-After"))
		}
		time.Sleep(time.Duration(secs) * time.Second)
		if code, body, _ := get(t, c, "http://api.test/retry", "k"); code != 200 {
			t.Fatalf("retry after the %ds the refusal named: %d %s, want 200", secs, code, body)
		}
		if r := <-slow; r.err != nil || r.a.code != http.StatusRequestTimeout {
			t.Errorf("the slow streamed body: %d %s (%v), want 408 at timeouts.client_body", r.a.code, r.a.body, r.err)
		}
		if secs > 13 {
			t.Errorf("Retry-After %d: more than client_body, its slack and the window", secs)
		}
	})
}

// TestUpstreamStallAfterHeaders: an upstream that sends its headers and
// then stalls (issue 12 row 5: the client got nothing for 20 s) has its
// headers passed on at once, and its body cut after
// timeouts.upstream_body_idle, logged as an error.
func TestUpstreamStallAfterHeaders(t *testing.T) {
	for _, tt := range []struct {
		name  string
		stall time.Duration
		whole bool // the body arrives in full
	}{
		{"a stall beyond upstream_body_idle is cut", 20 * time.Second, false},
		{"a shorter pause is not", 4 * time.Second, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			runSim(t, func(t *testing.T, s *sim) {
				s.serve("upstream.test:80", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Length", "19")
					io.WriteString(w, "first half")
					w.(http.Flusher).Flush()
					select {
					case <-time.After(tt.stall):
						io.WriteString(w, "-the rest")
					case <-r.Context().Done():
					}
				}))
				p := s.proxy("timeouts: {upstream_body_idle: 5s}\n" + simUpstreamYAML("upstream.test:80", ""))
				req, _ := http.NewRequest(http.MethodGet, "http://api.test/stall", nil)
				req.Header.Set("apikey", "k")
				start := time.Now()
				resp, err := p.client().Do(req)
				if err != nil {
					t.Fatalf("%v\n%s", err, p.logs)
				}
				defer resp.Body.Close()
				if took := time.Since(start); took > 100*time.Millisecond {
					t.Errorf("the headers reached the client %v after the request, want at once", took)
				}
				body, err := io.ReadAll(resp.Body)
				if tt.whole {
					if err != nil || string(body) != "first half-the rest" {
						t.Fatalf("body %q, %v; want it whole", body, err)
					}
					return
				}
				if err == nil {
					t.Fatalf("body %q read to a clean end: the stalled body passed for a whole one", body)
				}
				if took := time.Since(start); took != 5*time.Second {
					t.Errorf("cut %v after the request, want upstream_body_idle, 5s", took)
				}
				logs := p.logs.String()
				if !strings.Contains(logs, `"decision":"error"`) || !strings.Contains(logs, "upstream_body_idle") {
					t.Errorf("the stall is not logged as an error naming upstream_body_idle:\n%s", logs)
				}
			})
		})
	}
}

// TestUpgradedConnectionsHonourTunnelIdle: a WebSocket connection through
// the proxy stays open while either side speaks and is closed after
// timeouts.tunnel_idle of silence (issue 12 row 9: it was never closed),
// giving its tunnel back.
func TestUpgradedConnectionsHonourTunnelIdle(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		s.serve("upstream.test:80", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			io.Copy(c, brw) // echo until the proxy closes
		}))
		p := s.proxy("timeouts: {tunnel_idle: 5s}\n" + simUpstreamYAML("upstream.test:80", ""))
		conn, err := s.net.Dial(context.Background(), "tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		go io.WriteString(conn, "GET http://api.test/ws HTTP/1.1\r\nHost: api.test\r\napikey: k\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		if n := proxy.TunnelsOpen(p.srv); n != 1 {
			t.Errorf("%d tunnels open with one WebSocket, want 1", n)
		}
		for i := range 4 { // a message every 3 s: never idle
			time.Sleep(3 * time.Second)
			go io.WriteString(conn, "ping\n")
			if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
				t.Fatalf("echo %d: %q %v", i, line, err)
			}
		}
		quiet := time.Now()
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("a silent WebSocket: read %v, want the proxy to close it", err)
		}
		if took := time.Since(quiet); took != 5*time.Second {
			t.Errorf("closed after %v of silence, want tunnel_idle, 5s", took)
		}
		synctest.Wait()
		if n := proxy.TunnelsOpen(p.srv); n != 0 {
			t.Errorf("%d tunnels open after the WebSocket closed, want 0", n)
		}
	})
}

// TestTruncatedBodyNeverReachesTheUpstream: a client that announces a body
// and leaves half-way through it spends nothing and sends the upstream
// nothing: the body is read before admission.
func TestTruncatedBodyNeverReachesTheUpstream(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxy(simUpstreamYAML(rec.addr(), "limits: [1/1m]\n"))
		c, err := s.net.Dial(context.Background(), "tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "POST http://api.test/cut HTTP/1.1\r\nHost: api.test\r\napikey: k\r\nContent-Length: 100\r\n\r\nten bytes!")
		c.Close()
		synctest.Wait()
		if n := len(rec.all()); n != 0 {
			t.Errorf("the upstream saw %d requests, want none: the body never came whole", n)
		}
		if !strings.Contains(p.logs.String(), `"decision":"client_gone"`) {
			t.Errorf("no client_gone decision logged:\n%s", p.logs)
		}
		if err := wantStatus(p.client(), "http://api.test/after", "k", 200); err != nil {
			t.Errorf("the key's one request per minute after the cut body: %v (the cut body spent it)", err)
		}
	})
}
