package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// Bounded resources (issue 12, rows 2, 4 and 9): what all clients together
// may hold in the proxy. Each test reproduces the probe of the issue.

// limitLines counts the "resource limit reached" lines naming resource.
func limitLines(logs, resource string) int {
	n := 0
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"msg":"resource limit reached"`) && strings.Contains(l, `"resource":"`+resource+`"`) {
			n++
		}
	}
	return n
}

// TestTotalQueueIsBounded: max_queue bounds one key, and clients choose
// their keys; resources.max_queued bounds them all. Beyond it a request
// that cannot leave at once is refused with 429 and a Retry-After that
// holds, and one log line says so.
func TestTotalQueueIsBounded(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxy("resources: {max_queued: 10}\n" + simUpstreamYAML(rec.addr(), "limits: [1/1m]\nwindow_margin: 10ms\nmax_wait: 2m\n"))
		c := p.client()
		const keys = 30
		for i := range keys {
			if err := wantStatus(c, "http://api.test/first", fmt.Sprint("k", i), 200); err != nil {
				t.Fatal(err)
			}
		}
		answers := make([]answer, keys)
		errs := make([]error, keys)
		var wg sync.WaitGroup
		for i := range keys {
			wg.Go(func() { answers[i], errs[i] = fetch(c, "http://api.test/second", fmt.Sprint("k", i)) })
		}
		synctest.Wait()
		if n := proxy.InAdmission(p.srv); n != 10 {
			t.Errorf("%d requests waiting, want resources.max_queued, 10", n)
		}
		wg.Wait()
		queued, refused := 0, 0
		for i, a := range answers {
			switch {
			case errs[i] != nil:
				t.Fatal(errs[i])
			case a.code == 200:
				queued++
			case a.code == http.StatusTooManyRequests && strings.Contains(a.body, "resources.max_queued"):
				refused++
				secs, _ := strconv.Atoi(a.header.Get("Retry-After"))
				if secs < 1 || secs > 61 {
					t.Errorf("Retry-After %q for a key whose slot is a minute away", a.header.Get("Retry-After"))
				}
			default:
				t.Errorf("key %d: %d %s", i, a.code, a.body)
			}
		}
		if queued != 10 || refused != keys-10 {
			t.Errorf("%d requests waited and passed, %d were refused; want 10 and %d", queued, refused, keys-10)
		}
		// One line at the first refusal, one with the rest after 10 s.
		if n, logs := limitLines(p.logs.String(), "max_queued"), p.logs.String(); n != 2 || !strings.Contains(logs, `"refused_total":20`) {
			t.Errorf("%d lines for max_queued, want 2 counting 20 refusals:\n%s", n, logs)
		}
	})
}

// TestBufferedBodiesAreBounded: request bodies read before admission are
// held against resources.max_buffered_bytes, every request together
// (issue 12 row 2: 300 queued 1 MiB POSTs with Idempotency-Key took the
// process from 15 MB to 421 MB). What does not fit streams instead.
func TestBufferedBodiesAreBounded(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxy("resources: {max_buffered_bytes: 65536}\n" + simUpstreamYAML(rec.addr(), "limits: [1/30s]\nmax_wait: 1h\n"))
		c := p.client()
		if err := wantStatus(c, "http://api.test/first", "k", 200); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				a, err := post(c, "http://api.test/upload", "k", strings.NewReader(strings.Repeat("x", 30000)), 30000, "Idempotency-Key", fmt.Sprint("upload-", i))
				if err == nil && a.code != 200 {
					t.Errorf("upload %d: %d %s", i, a.code, a.body)
				}
			})
		}
		synctest.Wait() // twenty POSTs wait for the key's next slots
		if n := proxy.BufferedBytes(p.srv); n > 65536 || n < 60000 {
			t.Errorf("%d body bytes held while 20 bodies of 30000 wait, want two of them (60000) within 65536", n)
		}
		if n := limitLines(p.logs.String(), "max_buffered_bytes"); n != 1 {
			t.Errorf("%d lines for max_buffered_bytes, want 1", n)
		}
		wg.Wait() // one every 30 s
		if n := proxy.BufferedBytes(p.srv); n != 0 {
			t.Errorf("%d body bytes held after every request was answered, want 0", n)
		}
	})
}

// TestBodyBeyondTheBudgetIsNotRetried: a body that does not fit in the
// budget is not kept, so its request is not retried after a throttle; the
// same request with room in the budget is.
func TestBodyBeyondTheBudgetIsNotRetried(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		var mu sync.Mutex
		attempts := map[string]int{}
		s.serve("upstream.test:80", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			mu.Lock()
			attempts[r.URL.Path]++
			n := attempts[r.URL.Path]
			mu.Unlock()
			if n == 1 && r.Header.Get("apikey") == "k" {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			io.WriteString(w, "ok")
		}))
		p := s.proxy("resources: {max_buffered_bytes: 65536}\n" + simUpstreamYAML("upstream.test:80",
			"limits: [100/1s]\nmax_wait: 1h\noverrides: [{prefix: hold, limits: [1/1m]}]\n"))
		c := p.client()
		// A request waiting a minute holds 60000 bytes of the budget.
		if err := wantStatus(c, "http://api.test/hold-first", "hold", 200); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		held := make(chan struct{})
		go func() {
			defer close(held)
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://api.test/hold", strings.NewReader(strings.Repeat("h", 60000)))
			req.Header.Set("apikey", "hold")
			req.Header.Set("Idempotency-Key", "h")
			if resp, err := c.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		synctest.Wait()
		a, err := post(c, "http://api.test/streamed", "k", strings.NewReader(strings.Repeat("s", 30000)), 30000, "Idempotency-Key", "s")
		if err != nil {
			t.Fatal(err)
		}
		if a.code != http.StatusTooManyRequests || attempts["/streamed"] != 1 {
			t.Errorf("a body beyond the budget: %d after %d attempts, want the throttle after 1 (not kept, not retried)", a.code, attempts["/streamed"])
		}
		cancel()
		<-held
		synctest.Wait()
		a, err = post(c, "http://api.test/kept", "k", strings.NewReader(strings.Repeat("s", 30000)), 30000, "Idempotency-Key", "s2")
		if err != nil {
			t.Fatal(err)
		}
		if a.code != 200 || attempts["/kept"] != 2 {
			t.Errorf("a body within the budget: %d after %d attempts, want 200 after 2 (kept and retried)", a.code, attempts["/kept"])
		}
	})
}

// TestKeysAreBounded: a client that invents keys cannot make the store
// hold them without bound (issue 12 row 9: 30,000 random keys kept 24 h).
// At the bound a new key is answered 503 with the time one may be free,
// and the keys that hold sends keep them: never over.
func TestKeysAreBounded(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxyWith(simUpstreamYAML(rec.addr(), "limits: [1/1m]\nmode: reject\nwindow_margin: 10ms\n"), quota.NewMemoryStore(nil, quota.WithMaxKeys(16)))
		c := p.client()
		for i := range 16 {
			if err := wantStatus(c, "http://api.test/", fmt.Sprint("k", i), 200); err != nil {
				t.Fatal(err)
			}
		}
		code, body, h := get(t, c, "http://api.test/", "new")
		if code != http.StatusServiceUnavailable || errorCode(body) != "TOO_MANY_KEYS" {
			t.Fatalf("a new key at the bound: %d %s, want 503 TOO_MANY_KEYS", code, body)
		}
		secs, err := strconv.Atoi(h.Get("Retry-After"))
		if err != nil || secs < 59 || secs > 61 {
			t.Fatalf("Retry-After %q, want the minute until the first key is empty", h.Get("Retry-After"))
		}
		if code, _, _ := get(t, c, "http://api.test/", "k0"); code != http.StatusTooManyRequests {
			t.Errorf("a held key's second request within its minute: %d, want 429 (its sends kept)", code)
		}
		if n := limitLines(p.logs.String(), "max_keys"); n != 1 {
			t.Errorf("%d lines for max_keys, want 1", n)
		}
		time.Sleep(time.Duration(secs) * time.Second)
		if err := wantStatus(c, "http://api.test/", "new", 200); err != nil {
			t.Errorf("the new key after the Retry-After: %v", err)
		}
	})
}

// idleConns opens n connections to the proxy that send nothing.
func idleConns(t *testing.T, s *sim, addr string, n int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for range n {
		c, err := s.net.Dial(context.Background(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

// closedByPeer reports whether the other end closed c.
func closedByPeer(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	c.SetReadDeadline(time.Time{})
	return err == io.EOF
}

// TestIdleConnectionFloodCannotLockClientsOut: connections that send
// nothing (issue 12 row 4: 1100 of them under a 1024 fd limit made a
// legitimate request time out) count against
// resources.max_client_conns, and at the bound the longest idle go first:
// a legitimate request still passes.
func TestIdleConnectionFloodCannotLockClientsOut(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxy("resources: {max_client_conns: 16}\n" + simUpstreamYAML(rec.addr(), ""))
		flood := idleConns(t, s, p.addr, 40)
		synctest.Wait()
		for i, c := range flood {
			if want := i < 24; closedByPeer(c) != want {
				t.Errorf("idle connection %d of 40: closed %v, want %v (the 24 oldest make room)", i, !want, want)
			}
		}
		if n := proxy.ClientConns(p.srv); n != 16 {
			t.Errorf("%d client connections held, want the bound, 16", n)
		}
		if err := wantStatus(p.client(), "http://api.test/", "k", 200); err != nil {
			t.Fatalf("a legitimate request during the flood: %v", err)
		}
		if n := proxy.ClientConns(p.srv); n > 16 {
			t.Errorf("%d client connections held, want at most 16", n)
		}
		if n := limitLines(p.logs.String(), "max_client_conns"); n != 1 {
			t.Errorf("%d lines for max_client_conns, want 1", n)
		}
	})
}

// TestBusyConnectionsRefuseTheNextOne: when every connection is busy
// (none idle to close), a new one is answered 503 and closed.
func TestBusyConnectionsRefuseTheNextOne(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxy("resources: {max_client_conns: 16}\n" + simUpstreamYAML(rec.addr(), "limits: [1/1m]\nmax_wait: 1h\n"))
		first := idleConns(t, s, p.addr, 1)[0]
		go io.WriteString(first, "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\napikey: k\r\nConnection: close\r\n\r\n")
		if resp, _, err := (&rawConn{Conn: first, br: bufio.NewReader(first)}).read(http.MethodGet); err != nil || resp.StatusCode != 200 {
			t.Fatalf("first request: %v %v", resp, err)
		}
		synctest.Wait() // the proxy closed the first connection
		busy := idleConns(t, s, p.addr, 16)
		for _, c := range busy { // each waits a minute for its slot
			go io.WriteString(c, "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\napikey: k\r\n\r\n")
		}
		synctest.Wait()
		extra := idleConns(t, s, p.addr, 1)[0]
		resp, body, err := (&rawConn{Conn: extra, br: bufio.NewReader(extra)}).read(http.MethodGet)
		if err != nil || resp.StatusCode != http.StatusServiceUnavailable || errorCode(body) != "TOO_MANY_CONNECTIONS" {
			t.Fatalf("a connection beyond 16 busy ones: %v %q %v, want 503 TOO_MANY_CONNECTIONS", resp, body, err)
		}
		for _, c := range busy {
			c.Close()
		}
	})
}

// connect sends a CONNECT for target on a new connection to the proxy and
// returns the answer and the connection.
func connect(t *testing.T, s *sim, proxyAddr, target string) (*http.Response, net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := s.net.Dial(context.Background(), "tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	return resp, c, br
}

// TestTunnelsAreBounded: CONNECT tunnels, untouched or intercepted, count
// against resources.max_tunnels; beyond it a CONNECT is answered 503, and
// a tunnel that closes gives its place back.
func TestTunnelsAreBounded(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		ln := s.net.Listen("far.test:9000")
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(io.Discard, c); c.Close() }()
			}
		}()
		t.Cleanup(func() { ln.Close() })
		p := s.proxy("resources: {max_tunnels: 2}\n" + simUpstreamYAML("upstream.test:443", ""))
		first, firstConn, _ := connect(t, s, p.addr, "far.test:9000")
		second, _, _ := connect(t, s, p.addr, "api.test:443")
		if first.StatusCode != 200 || second.StatusCode != 200 {
			t.Fatalf("two tunnels: %d %d, want 200 200", first.StatusCode, second.StatusCode)
		}
		for _, target := range []string{"far.test:9000", "api.test:443"} {
			resp, _, br := connect(t, s, p.addr, target)
			body, _ := io.ReadAll(br)
			if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "TOO_MANY_TUNNELS") {
				t.Errorf("a third tunnel to %s: %d %s, want 503 TOO_MANY_TUNNELS", target, resp.StatusCode, body)
			}
		}
		firstConn.Close()
		synctest.Wait()
		if n := proxy.TunnelsOpen(p.srv); n != 1 {
			t.Errorf("%d tunnels open after one closed, want 1", n)
		}
		if resp, _, _ := connect(t, s, p.addr, "far.test:9000"); resp.StatusCode != 200 {
			t.Errorf("a tunnel after one closed: %d, want 200", resp.StatusCode)
		}
	})
}

// TestConnectToTheProxyItselfIsRefused: a CONNECT to the proxy's own
// address (issue 12 row 4: 200 nested CONNECTs over one client socket took
// 12 fds to 413), and an upstream whose connect_to reaches it, are refused
// with 508 PROXY_LOOP.
func TestConnectToTheProxyItselfIsRefused(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		var p *simProxy
		back := func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == "back.test:80" {
				addr = p.addr // a name for the proxy itself
			}
			return s.net.Dial(ctx, network, addr)
		}
		p = s.proxyDial(simUpstreamYAML("back.test:80", ""), quota.NewMemoryStore(nil), back)
		resp, _, br := connect(t, s, p.addr, p.addr)
		body, _ := io.ReadAll(br)
		if resp.StatusCode != http.StatusLoopDetected || !strings.Contains(string(body), "PROXY_LOOP") {
			t.Errorf("CONNECT to the proxy itself: %d %s, want 508 PROXY_LOOP", resp.StatusCode, body)
		}
		code, body2, _ := get(t, p.client(), "http://api.test/", "k")
		if code != http.StatusLoopDetected || errorCode(body2) != "PROXY_LOOP" {
			t.Errorf("an upstream whose connect_to reaches the proxy: %d %s, want 508 PROXY_LOOP", code, body2)
		}
	})
}

// TestConnectToTheProxyItselfOverTCP: the same on real sockets. A CONNECT
// to the proxy's port, under the names a client may use for it, is refused
// by the egress guard (403) before any dial, or by the loop check (508);
// an upstream whose connect_to names the proxy's port (the egress guard
// lets configured upstreams through) is refused by the loop check.
func TestConnectToTheProxyItselfOverTCP(t *testing.T) {
	p := startProxy(t, "")
	_, port, _ := net.SplitHostPort(p.url.Host)
	for _, target := range []string{p.url.Host, "localhost:" + port} {
		c := dialRaw(t, p, "")
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		resp, body, err := c.read(http.MethodConnect)
		if err != nil || (errorCode(body) != "PROXY_LOOP" && errorCode(body) != "EGRESS_DENIED") {
			t.Errorf("CONNECT %s: %v %q %v, want 403 EGRESS_DENIED or 508 PROXY_LOOP", target, resp, body, err)
		}
	}
	if err := p.reload("upstreams:\n  - name: api\n    hosts: [api.test]\n    connect_to: " + p.url.Host + "\n"); err != nil {
		t.Fatal(err)
	}
	if code, body, _ := get(t, p.client(), "http://api.test/", ""); code != http.StatusLoopDetected || errorCode(body) != "PROXY_LOOP" {
		t.Errorf("an upstream whose connect_to is the proxy's address: %d %s, want 508 PROXY_LOOP", code, body)
	}
}

// TestProxyLoopUnderAnotherNameIsClosed: a loop the dial cannot see (a
// listener whose address the proxy does not know, such as a socket handed
// over by a supervisor) is closed when the proxy accepts its own
// connection: no tunnel nests in another.
func TestProxyLoopUnderAnotherNameIsClosed(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		// The proxy accepts the connection before its own dial returns,
		// as it may on a real network.
		slowDial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := s.net.Dial(ctx, network, addr)
			time.Sleep(time.Millisecond)
			return c, err
		}
		p := s.proxyDial(simUpstreamYAML("upstream.test:80", ""), quota.NewMemoryStore(nil), slowDial)
		go p.srv.Serve(hiddenListener{s.net.Listen("hidden.test:81")})
		resp, c, br := connect(t, s, p.addr, "hidden.test:81")
		if resp.StatusCode != 200 {
			t.Fatalf("CONNECT hidden.test:81: %d", resp.StatusCode)
		}
		go fmt.Fprintf(c, "CONNECT hidden.test:81 HTTP/1.1\r\nHost: hidden.test:81\r\n\r\n")
		if b, err := io.ReadAll(br); len(b) > 0 || err != nil {
			t.Fatalf("a CONNECT inside the looped tunnel read %q %v, want the tunnel closed\n%s", b, err, p.logs)
		}
		synctest.Wait()
		if n := proxy.ClientConns(p.srv); n != 0 {
			t.Errorf("%d client connections left, want 0", n)
		}
		if !strings.Contains(p.logs.String(), "connection from the proxy itself closed") {
			t.Errorf("no log line for the loop:\n%s", p.logs)
		}
	})
}

// hiddenListener does not say its address.
type hiddenListener struct{ net.Listener }

func (hiddenListener) Addr() net.Addr { return memAddr("somewhere.test:1") }
