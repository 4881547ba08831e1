package proxy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
)

// Raw-socket tests of the proxy's framing: what it reads of a client
// connection, and when it stops reading it. Every read is bounded by a
// deadline.

// TestRefusedConnectClosesTheConnection: bytes a client sends after a
// CONNECT the proxy refuses were meant for the tunnel; read as a new
// request, they would be served in place of what was refused.
func TestRefusedConnectClosesTheConnection(t *testing.T) {
	dead := freePort(t)
	smuggled := "GET http://api.test/smuggled HTTP/1.1\r\nHost: api.test\r\napikey: k\r\n\r\n"
	for _, tt := range []struct {
		name, yaml, target string
		status             int
		code               string
	}{
		{"unknown host denied", "unknown_hosts: deny\n", "other.test:443", 403, "HOST_NOT_ALLOWED"},
		{"tunnel target unreachable", allowLoopback, dead, 502, "UPSTREAM_UNREACHABLE"},
		{"not a host:port", "", "api.test:99999", 400, "BAD_CONNECT_TARGET"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(t, false)
			p := startProxy(t, tt.yaml+upstreamYAML(rec, ""))
			c := dialRaw(t, p, "")
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n%s", tt.target, tt.target, smuggled)
			resp, body, err := c.read(http.MethodConnect)
			if err != nil || resp.StatusCode != tt.status || errorCode(body) != tt.code {
				t.Fatalf("CONNECT %s: %v %s %v, want %d %s", tt.target, resp, body, err, tt.status, tt.code)
			}
			if err := c.closed(); err != nil {
				t.Error(err)
			}
			for _, h := range rec.all() {
				t.Errorf("the bytes after the refused CONNECT reached the upstream: %s", h.path)
			}
		})
	}
}

// TestNoConnectInsideAnInterceptedTunnel: a CONNECT sent inside an
// intercepted tunnel would open a tunnel from inside one, unseen by the
// policy that intercepted the first.
func TestNoConnectInsideAnInterceptedTunnel(t *testing.T) {
	rec := newRecorder(t, true)
	other := newRecorder(t, false) // no policy names it
	p := startProxy(t, upstreamYAML(rec, ""))
	c := dialRaw(t, p, "api.test:443")
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", other.addr(), other.addr())
	resp, body, err := c.read(http.MethodConnect)
	if err != nil || resp.StatusCode != http.StatusMethodNotAllowed || errorCode(body) != "CONNECT_IN_TUNNEL" {
		t.Fatalf("CONNECT inside the tunnel: %v %s %v, want 405 CONNECT_IN_TUNNEL", resp, body, err)
	}
	if err := c.closed(); err != nil {
		t.Error(err)
	}
	if !strings.Contains(p.logs.String(), `"error":"CONNECT inside an intercepted tunnel"`) {
		t.Errorf("the refusal is not logged:\n%s", p.logs)
	}
}

// TestHostInsideATunnelMustNameTheConnectTarget: the tunnel was opened,
// admitted and given a certificate for its CONNECT host; a request in it
// naming another host (in Host or in an absolute URL) is refused with 421,
// never forwarded with that Host.
func TestHostInsideATunnelMustNameTheConnectTarget(t *testing.T) {
	rec := newRecorder(t, true)
	p := startProxy(t, upstreamYAML(rec, ""))
	for _, tt := range []struct {
		requestLine, host string
		status            int
	}{
		{"GET /a HTTP/1.1", "api.test", 200},
		{"GET /b HTTP/1.1", "API.Test:443", 200},
		{"GET https://api.test/c HTTP/1.1", "api.test", 200},
		{"GET /evil HTTP/1.1", "evil.example", 421},
		{"GET /evil HTTP/1.1", "api.test:8443", 421},
		{"GET /evil HTTP/1.1", "api.test.evil.example", 421},
		{"GET http://evil.example/evil HTTP/1.1", "evil.example", 421},
	} {
		t.Run(tt.requestLine+" Host: "+tt.host, func(t *testing.T) {
			c := dialRaw(t, p, "api.test:443")
			fmt.Fprintf(c, "%s\r\nHost: %s\r\napikey: k\r\n\r\n", tt.requestLine, tt.host)
			resp, body, err := c.read(http.MethodGet)
			if err != nil || resp.StatusCode != tt.status {
				t.Fatalf("%v %s %v, want %d", resp, body, err, tt.status)
			}
			if tt.status == 421 && errorCode(body) != "MISDIRECTED_REQUEST" {
				t.Errorf("421 body %s", body)
			}
		})
	}
	for _, h := range rec.all() {
		if h.path == "/evil" {
			t.Errorf("a request naming another host reached the upstream: %s %v", h.path, h.header)
		}
	}
	if n := len(rec.all()); n != 3 {
		t.Errorf("upstream saw %d requests, want the 3 naming api.test", n)
	}
}

// TestHeaderBoundsAre431 holds the default bounds on both servers: 100
// header fields and 64 KiB of request line and fields (each counted as
// "Name: value" and CRLF) pass, one more is 431 and closes the
// connection. A head far beyond the bound is cut by net/http before the
// handler sees it (MaxHeaderBytes), so its size never reaches memory.
func TestHeaderBoundsAre431(t *testing.T) {
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			rec := newRecorder(t, sc.tls)
			p := startProxy(t, upstreamYAML(rec, ""))
			target, line := "", "GET http://api.test%s HTTP/1.1\r\n"
			if sc.tls {
				target, line = "api.test:443", "GET %s HTTP/1.1\r\n"
			}
			// head is a request whose line and fields take exactly size
			// bytes in fields fields (Host and apikey among them).
			head := func(path string, fields, size int) string {
				var b strings.Builder
				fmt.Fprintf(&b, line, path)
				b.WriteString("Host: api.test\r\napikey: k\r\n")
				for i := 3; i < fields; i++ {
					fmt.Fprintf(&b, "X-F%03d: v\r\n", i)
				}
				pad := size - b.Len() - len("X-Pad: \r\n")
				if pad < 0 {
					t.Fatalf("%d fields take more than %d bytes", fields, size)
				}
				fmt.Fprintf(&b, "X-Pad: %s\r\n", strings.Repeat("p", pad))
				return b.String() + "\r\n"
			}
			for _, tt := range []struct {
				name         string
				fields, size int
				status       int
			}{
				{"100 fields", 100, 2000, 200},
				{"101 fields", 101, 2000, 431},
				{"64 KiB", 10, 64 << 10, 200},
				{"64 KiB and 1 byte", 10, 64<<10 + 1, 431},
			} {
				c := dialRaw(t, p, target)
				io.WriteString(c, head("/"+strings.ReplaceAll(tt.name, " ", "-"), tt.fields, tt.size))
				resp, body, err := c.read(http.MethodGet)
				if err != nil || resp.StatusCode != tt.status {
					t.Fatalf("%s: %v %s %v, want %d", tt.name, resp, body, err, tt.status)
				}
				if tt.status == 431 {
					if errorCode(body) != "HEADERS_TOO_LARGE" {
						t.Errorf("%s: body %s", tt.name, body)
					}
					if err := c.closed(); err != nil {
						t.Errorf("%s: %v", tt.name, err)
					}
				}
			}
			if n := len(rec.all()); n != 2 {
				t.Errorf("upstream saw %d requests, want the 2 within bounds", n)
			}

			// Far beyond: net/http stops reading at the bound (plus its 4 KiB
			// of slack) and answers 431 itself; the handler never runs.
			c := dialRaw(t, p, target)
			go io.WriteString(c, head("/huge", 10, 512<<10)) // may fail once the proxy hangs up
			resp, _, err := c.read(http.MethodGet)
			if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("512 KiB head: %v %v, want 431", resp, err)
			}
			if strings.Contains(p.logs.String(), "/huge") {
				t.Errorf("the 512 KiB head reached the handler (read whole into memory):\n%.2000s", p.logs)
			}
		})
	}
}

// TestLogLinesCutLongPaths: a client must not choose the length of the
// proxy's log lines.
func TestLogLinesCutLongPaths(t *testing.T) {
	rec := newRecorder(t, false)
	p := startProxy(t, "unknown_hosts: deny\n"+upstreamYAML(rec, ""))
	long := "/" + strings.Repeat("a", 20000)
	if code, _, _ := get(t, p.client(), "http://api.test"+long, "k"); code != 200 {
		t.Fatalf("long path: %d", code)
	}
	longHost := strings.Repeat("h", 20000) + ".test:443"
	c := dialRaw(t, p, "")
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", longHost, longHost)
	if resp, _, err := c.read(http.MethodConnect); err != nil || resp.StatusCode != 403 {
		t.Fatalf("long CONNECT host: %v %v", resp, err)
	}
	lines := strings.Split(strings.TrimSpace(p.logs.String()), "\n")
	seen := 0
	for _, l := range lines {
		if strings.Contains(l, `"msg":"request"`) || strings.Contains(l, `"msg":"connect"`) {
			seen++
			if len(l) > 3000 {
				t.Errorf("a log line of %d bytes: %.200s...", len(l), l)
			}
			if !strings.Contains(l, "...(20001 bytes)") && !strings.Contains(l, "...(20009 bytes)") {
				t.Errorf("the cut is not marked: %.300s", l)
			}
		}
	}
	if seen != 2 {
		t.Errorf("%d request and connect lines, want 2:\n%.3000s", seen, p.logs)
	}
}

// rawUpstream is an origin that records the exact bytes it receives, and
// answers every request it can parse with 200.
type rawUpstream struct {
	ln  net.Listener
	mu  sync.Mutex
	raw bytes.Buffer
	req []string // "METHOD PATH body=..." as net/http parses what came
}

func newRawUpstream(t *testing.T) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go u.serve(c)
		}
	}()
	return u
}

func (u *rawUpstream) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(io.TeeReader(c, writerFunc(func(p []byte) (int, error) {
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.raw.Write(p)
	})))
	for {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		u.mu.Lock()
		u.req = append(u.req, fmt.Sprintf("%s %s body=%q", r.Method, r.URL.Path, body))
		u.mu.Unlock()
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

func (u *rawUpstream) seen() (string, []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.raw.String(), append([]string(nil), u.req...)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestContentLengthWithChunkedCannotDesync is the CL+TE probe. net/http
// hides the conflict from the handler (it drops Content-Length and reads
// the body chunked, as RFC 9112 6.3 says), so the proxy cannot close the
// connection after such a request; it is safe because the proxy re-frames
// every request it forwards: the upstream gets one message per request the
// proxy parsed, never the client's framing headers, so the two cannot
// disagree on where a request ends. The smuggling attempts below are sent
// over a raw socket and the bytes the upstream received are checked.
func TestContentLengthWithChunkedCannotDesync(t *testing.T) {
	for _, tt := range []struct {
		name, head, body string
		want             []string // requests the upstream parsed
		answers          []int    // statuses the client reads, in order
		never            string   // bytes that must not reach the upstream
	}{
		{
			// A front end that trusts Content-Length would forward the
			// hidden request as part of the body; the proxy reads the
			// chunked body (empty) and the rest as the client's next
			// request, an origin-form one it refuses.
			name: "CL.TE: a request hidden in the body",
			head: "Content-Length: 44\r\nTransfer-Encoding: chunked\r\n",
			body: "0\r\n\r\nGET /admin HTTP/1.1\r\nHost: api.test\r\n\r\n",
			want: []string{`POST /first body=""`}, answers: []int{200, 400}, never: "/admin",
		},
		{
			// A back end that trusts Content-Length would take 3 bytes of
			// body and the rest as a request: the upstream must not get
			// that Content-Length.
			name: "TE.CL: a short Content-Length",
			head: "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
			body: "8\r\nSMUGGLED\r\n0\r\n\r\n",
			want: []string{`POST /first body="SMUGGLED"`}, answers: []int{200}, never: "Content-Length: 3",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up := newRawUpstream(t)
			p := startProxy(t, fmt.Sprintf("upstreams:\n  - name: api\n    hosts: [api.test]\n    connect_to: %s\n    identity: [{header: apikey}]\n", up.ln.Addr()))
			c := dialRaw(t, p, "")
			fmt.Fprintf(c, "POST http://api.test/first HTTP/1.1\r\nHost: api.test\r\napikey: k\r\n%s\r\n%s", tt.head, tt.body)
			for i, want := range tt.answers {
				resp, body, err := c.read(http.MethodPost)
				if err != nil || resp.StatusCode != want {
					t.Fatalf("answer %d: %v %s %v, want %d", i, resp, body, err, want)
				}
			}
			c.Close()
			raw, reqs := up.seen()
			if strings.Join(reqs, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("upstream parsed %q, want %q", reqs, tt.want)
			}
			if strings.Contains(raw, tt.never) {
				t.Errorf("upstream received %q:\n%s", tt.never, raw)
			}
			if strings.Contains(raw, "Content-Length") && strings.Contains(raw, "Transfer-Encoding") {
				t.Errorf("upstream received both framing headers:\n%s", raw)
			}
		})
	}
}

// TestHeaderBoundsNeedARestart: the listeners are built with the bounds,
// so a reload that changes them is refused, never silently ignored.
func TestHeaderBoundsNeedARestart(t *testing.T) {
	rec := newRecorder(t, false)
	p := startProxy(t, upstreamYAML(rec, ""))
	for _, tt := range []struct{ yaml, field string }{
		{"requests: {max_header_fields: 50}\n", "requests"},
		{"log: {max_path_bytes: 4096}\n", "log.max_path_bytes"},
	} {
		err := p.reload(tt.yaml + upstreamYAML(rec, ""))
		var restart *proxy.RestartNeededError
		if !errors.As(err, &restart) || !slices.Contains(restart.Fields, tt.field) {
			t.Errorf("reload with %q: %v, want a restart needed for %s", tt.yaml, err, tt.field)
		}
	}
	if err := p.reload(upstreamYAML(rec, "")); err != nil {
		t.Errorf("reload with the same bounds: %v", err)
	}
}
