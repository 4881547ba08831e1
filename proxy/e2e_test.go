package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
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
)

func TestForwardsRequestAndResponseUntouched(t *testing.T) {
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			rec := newRecorder(t, sc.tls)
			p := startProxy(t, upstreamYAML(rec, "limits: [100/1s]\n"))
			req, _ := http.NewRequest(http.MethodPost, sc.prefix+"/v1/items?page=2", strings.NewReader(`{"a":1}`))
			req.Header.Set("apikey", "k1")
			req.Header.Set("X-Custom", "kept")
			req.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
			resp, err := p.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "hello /v1/items" {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			hits := rec.all()
			if len(hits) != 1 {
				t.Fatalf("upstream saw %d requests, want 1", len(hits))
			}
			h := hits[0].header
			if h.Get("X-Custom") != "kept" || h.Get("apikey") != "k1" {
				t.Errorf("end-to-end headers lost: %v", h)
			}
			if h.Get("Proxy-Authorization") != "" || h.Get("X-Forwarded-For") != "" {
				t.Errorf("hop-by-hop or forwarding headers leaked upstream: %v", h)
			}
		})
	}
}

// TestAnyWindowBoundOnRealConnections is the promise over real sockets,
// plain and intercepted: with 30 clients pushing one key, the upstream
// never receives more than N requests in any window W.
//
// Arrivals are the kernel's receive times (see kerneltime_test.go), not
// the handler's clock: under load the Go scheduler can run the recorder's
// handler 100-300 ms after its request arrived, which once made this test
// count 24 requests in a window the kernel saw 20 in (and the proxy's own
// send times kept W + margin apart). Utilization, which depends on how
// promptly a loaded machine runs the proxy, is asserted on an exact clock
// in TestSimAnyWindowBoundAndUtilization and measured by the benchmarks.
func TestAnyWindowBoundOnRealConnections(t *testing.T) {
	const n, w, clients = 20, 2 * time.Second, 30
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder(t, sc.tls)
			p := startProxy(t, upstreamYAML(rec, fmt.Sprintf("limits: [%d/%v]\n", n, w)))
			c := p.client()
			// Until the upstream has seen three windows' worth (however
			// slow a loaded machine makes that), within a generous bound.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			go func() {
				for ctx.Err() == nil && len(rec.arrivals("shared-key")) <= 3*n {
					time.Sleep(10 * time.Millisecond)
				}
				cancel()
			}()
			var wg sync.WaitGroup
			var refused, failed sync.Map
			for i := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil {
						req, _ := http.NewRequestWithContext(ctx, http.MethodGet, sc.prefix+"/x", nil)
						req.Header.Set("apikey", "shared-key")
						resp, err := c.Do(req)
						if err != nil {
							if ctx.Err() == nil {
								failed.Store(i, err)
							}
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 {
							refused.Store(i, resp.StatusCode)
						}
					}
				}()
			}
			wg.Wait()
			failed.Range(func(k, v any) bool { t.Errorf("client %v: %v", k, v); return true })
			refused.Range(func(k, v any) bool { t.Errorf("client %v got status %v in queue mode", k, v); return true })

			ts := rec.arrivals("shared-key")
			if len(ts) <= 3*n {
				t.Fatalf("upstream saw %d requests in a minute, want more than %d: the test did not saturate the key", len(ts), 3*n)
			}
			if got := maxInWindow(ts, w); got > n {
				t.Errorf("upstream received %d requests within %v; limit is %d%s", got, w, n, windowViolations(ts, n, w))
			}
			var lag time.Duration
			for _, h := range rec.all() {
				if !h.stamped {
					t.Errorf("request %s arrived without a kernel timestamp: its arrival time is the handler's, not the machine's", h.path)
				}
				lag = max(lag, h.seen.Sub(h.at))
			}
			t.Logf("%d requests; max in any %v window %d (limit %d); the handler ran at most %v after the kernel received a request", len(ts), w, maxInWindow(ts, w), n, lag)
		})
	}
}

func TestRejectModeAnswers429WithTruthfulRetryAfter(t *testing.T) {
	runSim(t, testRejectModeAnswers429WithTruthfulRetryAfter)
}

func testRejectModeAnswers429WithTruthfulRetryAfter(t *testing.T, s *sim) {
	rec := s.recorder("upstream.test:80", false)
	p := s.proxy(simUpstreamYAML(rec.addr(), "limits: [3/1s, 100/1m]\nmode: reject\nwindow_margin: 10ms\n"))
	c := p.client()
	for i := range 3 {
		if code, _, _ := get(t, c, "http://api.test/a", "k"); code != 200 {
			t.Fatalf("request %d: status %d, want 200", i, code)
		}
	}
	code, body, h := get(t, c, "http://api.test/a", "k")
	if code != http.StatusTooManyRequests {
		t.Fatalf("fourth request: status %d, want 429", code)
	}
	secs, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || secs != 2 {
		t.Fatalf("Retry-After %q, want 2 (the slot is 1.01s away, rounded up)", h.Get("Retry-After"))
	}
	if got, want := h.Get("RateLimit-Policy"), `"3/1s";q=3;w=1, "100/1m";q=100;w=60`; got != want {
		t.Errorf("RateLimit-Policy %q, want %q", got, want)
	}
	if got, want := h.Get("RateLimit"), fmt.Sprintf(`"3/1s";r=0;t=%d`, secs); got != want {
		t.Errorf("RateLimit %q, want %q", got, want)
	}
	var e struct {
		Error struct {
			Code              string `json:"code"`
			Message           string `json:"message"`
			RetryAfterSeconds int    `json:"retry_after_seconds"`
			Source            string `json:"source"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("429 body %q: %v", body, err)
	}
	if e.Error.Code != "RATE_LIMITED" || e.Error.RetryAfterSeconds != secs || e.Error.Source != "proxy" || e.Error.Message == "" {
		t.Errorf("429 body %+v", e.Error)
	}
	if n := len(rec.arrivals("k")); n != 3 {
		t.Fatalf("upstream saw %d requests, want 3: refusals must not reach it", n)
	}
	// Truthful: retrying after Retry-After seconds succeeds.
	time.Sleep(time.Duration(secs) * time.Second)
	if code, _, _ := get(t, c, "http://api.test/a", "k"); code != 200 {
		t.Fatalf("retry after %ds: status %d, want 200", secs, code)
	}
}

func TestQueueModeHoldsUntilTheSlotThenBoundsTheQueue(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxy(simUpstreamYAML(rec.addr(), "limits: [2/1s]\nwindow_margin: 10ms\nmax_wait: 1500ms\nmax_queue: 2\n"))
		c := p.client()
		start := time.Now()
		get(t, c, "http://api.test/", "k")
		get(t, c, "http://api.test/", "k")
		// Two may wait (slots at 1.01s); the next would wait 2.02s > max_wait.
		type result struct {
			answer
			took time.Duration
			err  error
		}
		results := make(chan result, 2)
		for range 2 {
			go func() {
				a, err := fetch(c, "http://api.test/", "k")
				results <- result{a, time.Since(start), err}
			}()
		}
		synctest.Wait() // both are queued now
		code, _, h := get(t, c, "http://api.test/", "k")
		if code != http.StatusTooManyRequests {
			t.Fatalf("request beyond max_wait: status %d, want 429", code)
		}
		if ra, _ := strconv.Atoi(h.Get("Retry-After")); ra != 3 {
			t.Errorf("Retry-After %q, want 3 (the first free slot is 2.02s away)", h.Get("Retry-After"))
		}
		for range 2 {
			r := <-results
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.code != 200 || r.took != 1010*time.Millisecond {
				t.Errorf("queued request: status %d after %v, want 200 at its slot, 1.01s", r.code, r.took)
			}
		}
		if ts := rec.arrivals("k"); maxInWindow(ts, time.Second) > 2 || len(ts) != 4 {
			t.Errorf("upstream saw %d requests, at most %d within 1s; want 4, at most 2", len(ts), maxInWindow(ts, time.Second))
		}
	})
}

func TestMaxQueueRefusesTheExtraWaiter(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		p := s.proxy(simUpstreamYAML(rec.addr(), "limits: [1/1s]\nwindow_margin: 10ms\nmax_wait: 10s\nmax_queue: 1\n"))
		c := p.client()
		get(t, c, "http://api.test/", "k")
		done := make(chan error, 1)
		go func() { done <- wantStatus(c, "http://api.test/", "k", 200) }()
		synctest.Wait() // the first waiter is queued
		code, body, _ := get(t, c, "http://api.test/", "k")
		if code != http.StatusTooManyRequests || !strings.Contains(body, "max_queue") {
			t.Fatalf("second waiter: %d %s, want 429 naming max_queue", code, body)
		}
		if err := <-done; err != nil {
			t.Fatalf("first waiter: %v", err)
		}
	})
}

// TestClientDisconnectWhileQueuedGivesTheSlotBack: a queued client that
// leaves consumes nothing upstream, and the next client takes its slot.
func TestClientDisconnectWhileQueuedGivesTheSlotBack(t *testing.T) {
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			runSim(t, func(t *testing.T, s *sim) {
				rec := s.recorder("upstream.test:443", sc.tls)
				p := s.proxy(simUpstreamYAML(rec.addr(), "limits: [1/1s]\nwindow_margin: 10ms\n"))
				c := p.client()
				start := time.Now()
				if code, _, _ := get(t, c, sc.prefix+"/a", "k"); code != 200 {
					t.Fatalf("first request: %d", code)
				}
				// B queues for the slot at 1.01s, then gives up after 300ms.
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, sc.prefix+"/b", nil)
				req.Header.Set("apikey", "k")
				if resp, err := c.Do(req); err == nil {
					resp.Body.Close()
					t.Fatalf("B was answered (%d) before its slot", resp.StatusCode)
				}
				time.Sleep(100 * time.Millisecond) // the proxy notices
				// C arrives at 0.4s and must get B's slot at 1.01s, not 2.02s.
				if code, _, _ := get(t, c, sc.prefix+"/c", "k"); code != 200 {
					t.Fatalf("C: %d", code)
				}
				if took := time.Since(start); took != 1010*time.Millisecond {
					t.Errorf("C finished after %v, want 1.01s: B's slot was not given back", took)
				}
				var paths []string
				for _, h := range rec.all() {
					paths = append(paths, h.path)
				}
				if strings.Join(paths, ",") != "/a,/c" {
					t.Errorf("upstream saw %v, want [/a /c]: a client that left must consume nothing", paths)
				}
				if !strings.Contains(p.logs.String(), `"decision":"client_gone"`) {
					t.Errorf("no client_gone decision logged")
				}
			})
		})
	}
}

func TestKeepAliveInsideAnInterceptedTunnel(t *testing.T) {
	rec := newRecorder(t, true)
	p := startProxy(t, upstreamYAML(rec, "limits: [1000/1s]\n"))
	c := p.client()
	for i := range 20 {
		if code, _, _ := get(t, c, "https://api.test/k", "k"); code != 200 {
			t.Fatalf("request %d: %d", i, code)
		}
	}
	if n := p.accepts.Load(); n != 1 {
		t.Errorf("20 requests used %d client connections, want 1 (keep-alive inside the tunnel)", n)
	}
	if n := rec.newConns.Load(); n != 1 {
		t.Errorf("upstream saw %d connections, want 1 (pooled)", n)
	}
	if len(rec.all()) != 20 {
		t.Errorf("upstream saw %d requests, want 20", len(rec.all()))
	}
}

func TestClientConnectionCloseKeepsTheUpstreamConnection(t *testing.T) {
	rec := newRecorder(t, false)
	p := startProxy(t, upstreamYAML(rec, "limits: [1000/1s]\n"))
	c := p.client()
	c.Transport.(*http.Transport).DisableKeepAlives = true // sends Connection: close
	for range 10 {
		if code, _, _ := get(t, c, "http://api.test/", "k"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	if n := p.accepts.Load(); n != 10 {
		t.Fatalf("client connections %d, want 10 (one per request)", n)
	}
	if n := rec.newConns.Load(); n != 1 {
		t.Errorf("upstream connections %d, want 1: a client's Connection: close must not close the pooled one", n)
	}
}

func TestUnknownHostIsTunnelledUntouched(t *testing.T) {
	rec := newRecorder(t, true)
	other := newRecorder(t, true) // no policy names it
	p := startProxy(t, allowLoopback+upstreamYAML(rec, "limits: [1/1h]\n"))
	// The client trusts only the upstream's own CA: success proves the
	// proxy did not terminate TLS.
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(p.url), TLSClientConfig: &tls.Config{RootCAs: getPKI(t).pool}}}
	for range 3 { // no limits apply either
		if code, body, _ := get(t, c, "https://"+other.addr()+"/t", "k"); code != 200 || body != "hello /t" {
			t.Fatalf("tunnelled request: %d %q", code, body)
		}
	}
	// And a client trusting only the proxy's CA cannot talk to it.
	if _, err := p.client().Get("https://" + other.addr() + "/t"); err == nil {
		t.Fatal("tunnelled connection presented the proxy's certificate")
	}
}

func TestUnknownHostDenied(t *testing.T) {
	rec := newRecorder(t, false)
	other := newRecorder(t, true)
	p := startProxy(t, "unknown_hosts: deny\n"+upstreamYAML(rec, "limits: [10/1s]\n"))
	code, body, _ := get(t, p.client(), "http://"+rec.addr()+"/", "")
	if code != http.StatusForbidden || !strings.Contains(body, "HOST_NOT_ALLOWED") {
		t.Errorf("plain request to an unknown host: %d %s", code, body)
	}
	_, err := p.client().Get("https://" + other.addr() + "/")
	if err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Errorf("CONNECT to an unknown host: err %v, want 403 Forbidden", err)
	}
	if n := len(other.all()) + len(rec.all()); n != 0 {
		t.Errorf("denied requests reached upstreams: %d", n)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestUnreachableUpstreamIs502AndGivesTheSlotBack(t *testing.T) {
	dead := freePort(t)
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			p := startProxy(t, fmt.Sprintf(`upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [1/1h]
    mode: reject
`, dead))
			for i := range 3 { // the slot is given back each time: 502, never 429
				code, body, _ := get(t, p.client(), sc.prefix+"/x", "k")
				if code != http.StatusBadGateway || !strings.Contains(body, "UPSTREAM_UNREACHABLE") {
					t.Fatalf("request %d: %d %s, want 502 UPSTREAM_UNREACHABLE", i, code, body)
				}
			}
		})
	}
}

func TestSlowUpstreamIs504(t *testing.T) {
	rec := newRecorder(t, false)
	rec.delay.Store(int64(2 * time.Second))
	p := startProxy(t, "timeouts: {response_header: 200ms}\n"+upstreamYAML(rec, "limits: [10/1s]\n"))
	code, body, _ := get(t, p.client(), "http://api.test/slow", "k")
	if code != http.StatusGatewayTimeout || !strings.Contains(body, "UPSTREAM_TIMEOUT") {
		t.Fatalf("slow upstream: %d %s, want 504", code, body)
	}
}

func TestNotAProxyRequest(t *testing.T) {
	rec := newRecorder(t, false)
	p := startProxy(t, upstreamYAML(rec, ""))
	resp, err := http.Get(p.url.String() + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "HTTP_PROXY") {
		t.Fatalf("direct request to the proxy: %d %s", resp.StatusCode, body)
	}
}

// TestNoCredentialInAnyOutput sends known secrets every way a credential
// travels, through passes, refusals and failures, and greps every log line
// and every answer the proxy wrote for them.
func TestNoCredentialInAnyOutput(t *testing.T) {
	rec := newRecorder(t, false)
	dead := freePort(t)
	p := startProxy(t, fmt.Sprintf(`upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity:
      - header: apikey
      - authorization: Bearer
      - query: access_token
    limits: [1/1h]
    mode: reject
  - name: down
    hosts: [down.test]
    connect_to: %s
    identity: [{query: access_token}, {authorization: Bearer}]
    limits: [5/1h]
`, rec.addr(), dead))
	secrets := []string{"sk_live_HEADERSECRET1", "BEARERSECRET2", "QUERYSECRET3"}
	var answers strings.Builder
	c := p.client()
	send := func(rawURL string, hdr http.Header) {
		req, _ := http.NewRequest(http.MethodGet, rawURL, nil)
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := c.Do(req)
		if err != nil {
			answers.WriteString(err.Error())
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Fprintf(&answers, "%d %v %s\n", resp.StatusCode, resp.Header, body)
	}
	for range 2 { // a pass, then a refusal, for each way
		send("http://api.test/p", http.Header{"Apikey": {secrets[0]}})
		send("http://api.test/p", http.Header{"Authorization": {"Bearer " + secrets[1]}})
		send("http://api.test/p?access_token="+secrets[2], nil)
		send("http://down.test/p?access_token="+secrets[2], nil)
		send("https://down.test/p?access_token="+secrets[2], http.Header{"Authorization": {"Bearer " + secrets[1]}})
	}
	out := p.logs.String() + answers.String()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("secret %q appears in the proxy's output:\n%s", s, out)
		}
	}
	for _, want := range []string{`"decision":"rejected"`, `"status":502`, `"identity":"authorization:bearer"`, `"identity":"query:access_token"`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s: the test did not exercise that path", want)
		}
	}
}

func TestShutdownWaitsForQueuedRequests(t *testing.T) {
	rec := newRecorder(t, false)
	p := startProxy(t, upstreamYAML(rec, "limits: [1/500ms]\nwindow_margin: 10ms\n"))
	c := p.client()
	get(t, c, "http://api.test/", "k")
	done := make(chan error, 1)
	go func() { done <- wantStatus(c, "http://api.test/", "k", 200) }()
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("queued request during shutdown: %v", err)
	}
}

// TestTunnelIdleCountsBothDirections: a tunnel carrying a one-way stream is
// not idle, however quiet the other direction.
func TestTunnelIdleCountsBothDirections(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		ln := s.net.Listen("stream.test:9000")
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			for i := range 20 { // one byte every 50ms for a second
				c.Write([]byte{byte('a' + i)})
				time.Sleep(50 * time.Millisecond)
			}
		}()
		p := s.proxy("timeouts: {tunnel_idle: 200ms}\n" + simUpstreamYAML("upstream.test:80", ""))
		conn, err := s.net.Dial(context.Background(), "tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		go fmt.Fprintf(conn, "CONNECT stream.test:9000 HTTP/1.1\r\nHost: stream.test:9000\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(br)
		if len(got) != 20 {
			t.Fatalf("one-way stream through the tunnel: got %d of 20 bytes (%q)", len(got), got)
		}
	})
}

// TestStreamedResponsesAreNotHeldBack: server-sent events (LLM APIs stream
// tokens this way) reach the client as they are written, through plain and
// intercepted connections.
func TestStreamedResponsesAreNotHeldBack(t *testing.T) {
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			release := make(chan struct{})
			up := startOrigin(t, sc.tls, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, "data: first\n\n")
				w.(http.Flusher).Flush()
				<-release
				io.WriteString(w, "data: second\n\n")
			}))
			defer close(release)
			p := startProxy(t, fmt.Sprintf("upstreams:\n  - profile: openai\n    hosts: [api.test]\n    connect_to: %s\n", up.Listener.Addr()))
			req, _ := http.NewRequest(http.MethodPost, sc.prefix+"/v1/chat/completions", strings.NewReader(`{"stream":true}`))
			req.Header.Set("Authorization", "Bearer sk-test")
			resp, err := p.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			line := make(chan string, 1)
			go func() {
				l, _ := bufio.NewReader(resp.Body).ReadString('\n')
				line <- l
			}()
			select {
			case l := <-line:
				if l != "data: first\n" {
					t.Fatalf("first event %q", l)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("the first event did not arrive while the stream was open: the proxy buffered it")
			}
		})
	}
}
