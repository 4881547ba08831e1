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

// TestAnyWindowBoundAndUtilization is the promise: with 30 clients pushing
// one key, the upstream never sees more than N in any window W, and it
// receives at least 95% of N per W.
//
// The window margin (120ms here, 3% of W) absorbs the time between the
// proxy writing a request and the upstream's handler reading its clock,
// which under -race on two busy cores reaches 70ms (on a real network: the
// one-way latency to the vendor).
func TestAnyWindowBoundAndUtilization(t *testing.T) {
	const n, w, windows, clients = 20, 4 * time.Second, 2, 30
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder(t, sc.tls)
			p := startProxy(t, upstreamYAML(rec, fmt.Sprintf("limits: [%d/%v]\nwindow_margin: 120ms\n", n, w)))
			c := p.client()
			ctx, cancel := context.WithTimeout(context.Background(), windows*w+300*time.Millisecond)
			defer cancel()
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
			if len(ts) < 2*n {
				t.Fatalf("upstream saw %d requests, want at least %d", len(ts), 2*n)
			}
			if got := maxInWindow(ts, w); got > n {
				t.Errorf("upstream saw %d requests within %v; limit is %d", got, w, n)
				for i := n; i < len(ts); i++ {
					if gap := ts[i].Sub(ts[i-n]); gap < w {
						t.Logf("arrivals %d at +%v and %d at +%v are %v apart", i-n, ts[i-n].Sub(ts[0]), i, ts[i].Sub(ts[0]), gap)
					}
				}
			}
			// Utilization: under saturation request i+N follows request i
			// by W; the mean of those gaps gives the rate achieved.
			var sum time.Duration
			for i := n; i < len(ts); i++ {
				sum += ts[i].Sub(ts[i-n])
			}
			meanGap := sum / time.Duration(len(ts)-n)
			util := float64(w) / float64(meanGap)
			if util < 0.95 {
				t.Errorf("utilization %.3f (mean gap between request i and i+%d: %v), want >= 0.95", util, n, meanGap)
			}
			t.Logf("%d requests; max in any %v window %d (limit %d); utilization %.3f", len(ts), w, maxInWindow(ts, w), n, util)
		})
	}
}

func TestRejectModeAnswers429WithTruthfulRetryAfter(t *testing.T) {
	rec := newRecorder(t, false)
	p := startProxy(t, upstreamYAML(rec, "limits: [3/1s, 100/1m]\nmode: reject\nwindow_margin: 10ms\n"))
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
	if err != nil || secs < 1 || secs > 2 {
		t.Fatalf("Retry-After %q, want an integer in [1, 2]", h.Get("Retry-After"))
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
	rec := newRecorder(t, false)
	p := startProxy(t, upstreamYAML(rec, "limits: [2/1s]\nwindow_margin: 10ms\nmax_wait: 1500ms\nmax_queue: 2\n"))
	c := p.client()
	start := time.Now()
	get(t, c, "http://api.test/", "k")
	get(t, c, "http://api.test/", "k")
	// Two may wait (slots at ~1s); the next would wait ~2s > max_wait.
	type result struct {
		answer
		took time.Duration
		err  error
	}
	results := make(chan result, 3)
	for range 2 {
		go func() {
			a, err := fetch(c, "http://api.test/", "k")
			results <- result{a, time.Since(start), err}
		}()
	}
	time.Sleep(200 * time.Millisecond) // both are queued now
	code, _, h := get(t, c, "http://api.test/", "k")
	if code != http.StatusTooManyRequests {
		t.Fatalf("request beyond max_wait: status %d, want 429", code)
	}
	if ra, _ := strconv.Atoi(h.Get("Retry-After")); ra != 2 {
		t.Errorf("Retry-After %q, want 2 (the first free slot is ~1.8s away)", h.Get("Retry-After"))
	}
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.code != 200 {
			t.Fatalf("queued request: status %d, want 200", r.code)
		}
		if r.took < time.Second {
			t.Errorf("queued request finished after %v, before its slot at 1s", r.took)
		}
	}
	if got := maxInWindow(rec.arrivals("k"), time.Second); got > 2 {
		t.Errorf("upstream saw %d within 1s, limit 2", got)
	}
}

func TestMaxQueueRefusesTheExtraWaiter(t *testing.T) {
	rec := newRecorder(t, false)
	p := startProxy(t, upstreamYAML(rec, "limits: [1/1s]\nwindow_margin: 10ms\nmax_wait: 10s\nmax_queue: 1\n"))
	c := p.client()
	get(t, c, "http://api.test/", "k")
	done := make(chan error, 1)
	go func() { done <- wantStatus(c, "http://api.test/", "k", 200) }()
	time.Sleep(150 * time.Millisecond)
	code, body, _ := get(t, c, "http://api.test/", "k")
	if code != http.StatusTooManyRequests || !strings.Contains(body, "max_queue") {
		t.Fatalf("second waiter: %d %s, want 429 naming max_queue", code, body)
	}
	if err := <-done; err != nil {
		t.Fatalf("first waiter: %v", err)
	}
}

// TestClientDisconnectWhileQueuedGivesTheSlotBack: a queued client that
// leaves consumes nothing upstream, and the next client takes its slot.
func TestClientDisconnectWhileQueuedGivesTheSlotBack(t *testing.T) {
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			rec := newRecorder(t, sc.tls)
			p := startProxy(t, upstreamYAML(rec, "limits: [1/1s]\nwindow_margin: 10ms\n"))
			c := p.client()
			start := time.Now()
			if code, _, _ := get(t, c, sc.prefix+"/a", "k"); code != 200 {
				t.Fatalf("first request: %d", code)
			}
			// B queues for the slot at ~1s, then gives up after 300ms.
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, sc.prefix+"/b", nil)
			req.Header.Set("apikey", "k")
			if resp, err := c.Do(req); err == nil {
				resp.Body.Close()
				t.Fatalf("B was answered (%d) before its slot", resp.StatusCode)
			}
			time.Sleep(100 * time.Millisecond) // let the proxy notice
			// C arrives at ~0.4s and must get B's slot at ~1s, not 2s.
			if code, _, _ := get(t, c, sc.prefix+"/c", "k"); code != 200 {
				t.Fatalf("C: %d", code)
			}
			took := time.Since(start)
			if took > 1600*time.Millisecond {
				t.Errorf("C finished after %v: B's slot was not given back", took)
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
	p := startProxy(t, upstreamYAML(rec, "limits: [1/1h]\n"))
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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
	rec := newRecorder(t, false)
	p := startProxy(t, "timeouts: {tunnel_idle: 200ms}\n"+upstreamYAML(rec, ""))
	conn, err := net.Dial("tcp", p.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", ln.Addr(), ln.Addr())
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
