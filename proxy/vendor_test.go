package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// vendor is a recording upstream that enforces its own fixed-window quota
// and throttles in one vendor's dialect.
type vendor struct {
	srv     *httptest.Server // nil in a simulation
	address string
	style   string // clarifai, engagor, closient
	quota   int
	window  time.Duration
	outside int // requests an outside caller spends at the start of each window
	// sliding makes the vendor count any interval of length window (an
	// exact sliding log) instead of fixed windows from start.
	sliding bool
	start   time.Time

	mu        sync.Mutex
	used      map[int64]int
	penalty   time.Time // throttle everything until then
	arrivals  []time.Time
	accepted  []time.Time
	throttled []time.Time
	bodies    []string
}

func newVendor(t *testing.T, style string, quota int, window time.Duration) *vendor {
	t.Helper()
	v := &vendor{style: style, quota: quota, window: window, start: time.Now(), used: map[int64]int{}}
	v.srv = httptest.NewServer(http.HandlerFunc(v.serve))
	v.address = v.srv.Listener.Addr().String()
	t.Cleanup(v.srv.Close)
	return v
}

// vendor starts a vendor stand-in on addr in the simulation.
func (s *sim) vendor(addr, style string, quota int, window time.Duration) *vendor {
	v := &vendor{address: addr, style: style, quota: quota, window: window, start: time.Now(), used: map[int64]int{}}
	s.serve(addr, http.HandlerFunc(v.serve))
	return v
}

func (v *vendor) addr() string { return v.address }

func (v *vendor) serve(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	body, _ := io.ReadAll(r.Body)
	v.mu.Lock()
	v.arrivals = append(v.arrivals, now)
	v.bodies = append(v.bodies, string(body))
	idx := int64(now.Sub(v.start) / v.window)
	if _, ok := v.used[idx]; !ok {
		v.used[idx] = v.outside
	}
	windowEnd := v.start.Add(time.Duration(idx+1) * v.window)
	used := v.used[idx]
	if v.sliding {
		// Every accepted request in the last window counts; the window
		// frees when the oldest of them leaves it.
		used = 0
		for i := len(v.accepted) - 1; i >= 0 && now.Sub(v.accepted[i]) < v.window; i-- {
			used++
		}
		windowEnd = now.Add(v.window)
		if used > 0 {
			windowEnd = v.accepted[len(v.accepted)-used].Add(v.window)
		}
	}
	throttle := now.Before(v.penalty) || used >= v.quota
	if !throttle {
		v.used[idx]++
		v.accepted = append(v.accepted, now)
		used++
	} else {
		v.throttled = append(v.throttled, now)
	}
	remaining := max(v.quota-used, 0)
	v.mu.Unlock()

	h := w.Header()
	// Seconds until the reset, rounded up, as vendors report it.
	resetIn := int((time.Until(windowEnd) + time.Second - 1) / time.Second)
	if now.Before(v.penalty) {
		resetIn = 1 // a vendor whose Retry-After is shorter than its penalty
	}
	switch v.style {
	case "engagor":
		h.Set("X-RateLimit-Limit", strconv.Itoa(v.quota))
		h.Set("X-RateLimit-Time", strconv.Itoa(int(v.window.Seconds())))
		h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(ceilUnix(windowEnd), 10))
		if throttle {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"rate_limit_reached","error_description":"Rate limit reached."}`)
			return
		}
	case "closient":
		h.Set("RateLimit-Policy", fmt.Sprintf("%d;w=%d", v.quota, int(v.window.Seconds())))
		h.Set("RateLimit-Limit", strconv.Itoa(v.quota))
		h.Set("RateLimit-Remaining", strconv.Itoa(remaining))
		h.Set("RateLimit-Reset", strconv.Itoa(resetIn))
		h.Set("X-RateLimit-Limit", strconv.Itoa(v.quota))
		h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(ceilUnix(windowEnd), 10))
		if throttle {
			h.Set("Retry-After", strconv.Itoa(resetIn))
			h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprintf(w, `{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded.","status":429,"details":{"retry_after_seconds":%d}}}`, resetIn)
			return
		}
	case "clarifai":
		h.Set("Content-Type", "application/json")
		if throttle { // the throttle rides in a 200, in the body only
			io.WriteString(w, `{"status":{"code":"CONN_THROTTLED","description":"Making too many requests","details":"exceeded limit of 15 requests per second","req_id":"x"}}`)
			return
		}
		io.WriteString(w, `{"status":{"code":10000,"description":"Ok"},"outputs":[]}`)
		return
	}
	io.WriteString(w, "ok")
}

// acceptedTimes returns when the vendor accepted each request.
func (v *vendor) acceptedTimes() []time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]time.Time(nil), v.accepted...)
}

// ceilUnix is t in Unix seconds, rounded up: the reset as vendors report
// it, never before the window really ends.
func ceilUnix(t time.Time) int64 {
	if t.Nanosecond() > 0 {
		return t.Unix() + 1
	}
	return t.Unix()
}

func (v *vendor) counts() (arrivals, throttled []time.Time, bodies []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]time.Time(nil), v.arrivals...), append([]time.Time(nil), v.throttled...), append([]string(nil), v.bodies...)
}

func vendorYAML(v *vendor, profile, extra string) string {
	return fmt.Sprintf(`upstreams:
  - profile: %s
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
%s`, profile, v.addr(), indent(extra, "    "))
}

// TestVendorThrottlesReachTheClientAs429 shows each vendor's own way of
// saying "slow down" rewritten to 429 with Retry-After, the vendor's body
// kept and its status named.
func TestVendorThrottlesReachTheClientAs429(t *testing.T) {
	tests := []struct {
		style, profile string
		wantStatus     string
		wantBody       string
		maxRetryAfter  int
	}{
		{"clarifai", "clarifai", "200", "CONN_THROTTLED", 2},        // no Retry-After: the configured default wait
		{"engagor", "engagor", "400", "rate_limit_reached", 4},      // from X-RateLimit-Reset
		{"closient", "closient", "429", `"retry_after_seconds"`, 4}, // Retry-After
	}
	for _, tt := range tests {
		t.Run(tt.style, func(t *testing.T) {
			v := newVendor(t, tt.style, 3, 2*time.Second)
			p := startProxy(t, vendorYAML(v, tt.profile, "limits: [100/1s]\nmode: reject\nlearn: {mode: off}\nthrottle: {default_wait: 2s}\n"))
			c := p.client()
			var code int
			var body string
			var h http.Header
			for i := range 4 {
				code, body, h = get(t, c, "http://api.test/v2/models", "k")
				if i < 3 && code != 200 {
					t.Fatalf("request %d within the vendor's quota: %d %s", i, code, body)
				}
			}
			if code != http.StatusTooManyRequests {
				t.Fatalf("vendor throttle reached the client as %d %s, want 429", code, body)
			}
			if got := h.Get("X-RateLimit-Proxy-Upstream-Status"); got != tt.wantStatus {
				t.Errorf("X-RateLimit-Proxy-Upstream-Status %q, want %q", got, tt.wantStatus)
			}
			if !strings.Contains(body, tt.wantBody) {
				t.Errorf("the vendor's body was not kept: %q", body)
			}
			ra, err := strconv.Atoi(h.Get("Retry-After"))
			if err != nil || ra < 1 || ra > tt.maxRetryAfter {
				t.Errorf("Retry-After %q, want an integer in [1, %d]", h.Get("Retry-After"), tt.maxRetryAfter)
			}
			if !strings.Contains(h.Get("RateLimit"), ";r=0;t=") {
				t.Errorf("RateLimit header %q", h.Get("RateLimit"))
			}
			// The cooldown: the next request is answered by the proxy and
			// never reaches the vendor.
			before, _, _ := v.counts()
			code, body, _ = get(t, c, "http://api.test/v2/models", "k")
			after, _, _ := v.counts()
			if code != http.StatusTooManyRequests || !strings.Contains(body, `"source":"proxy"`) || len(after) != len(before) {
				t.Errorf("during the cooldown: %d %s, upstream saw %d more", code, body, len(after)-len(before))
			}
		})
	}
}

func TestRewriteCanBeSwitchedOff(t *testing.T) {
	v := newVendor(t, "engagor", 1, 2*time.Second)
	p := startProxy(t, vendorYAML(v, "engagor", "mode: reject\nlearn: {mode: off}\nthrottle: {rewrite: false}\n"))
	get(t, p.client(), "http://api.test/", "k")
	code, body, _ := get(t, p.client(), "http://api.test/", "k")
	if code != http.StatusBadRequest || !strings.Contains(body, "rate_limit_reached") {
		t.Fatalf("with rewrite off: %d %s, want the vendor's own 400", code, body)
	}
}

// TestTransparentRetry: a throttled GET is waited out and retried by the
// proxy, so the client just sees the success; a POST is not replayed unless
// it carries an Idempotency-Key, and then with the same body.
func TestTransparentRetry(t *testing.T) { runSim(t, testTransparentRetry) }

func testTransparentRetry(t *testing.T, s *sim) {
	v := s.vendor("vendor.test:80", "clarifai", 1, time.Second)
	p := s.proxy(vendorYAML(v, "clarifai", "limits: [100/1s]\nmax_wait: 5s\nlearn: {mode: off}\nthrottle: {default_wait: 1s}\n"))
	c := p.client()
	get(t, c, "http://api.test/a", "k") // spends the vendor's window
	start := time.Now()
	code, body, _ := get(t, c, "http://api.test/b", "k")
	if code != 200 || !strings.Contains(body, `"Ok"`) {
		t.Fatalf("retried GET: %d %s, want the success", code, body)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("GET answered after %v: the retry did not wait the cooldown", took)
	}
	arrivals, throttled, _ := v.counts()
	if len(arrivals) != 3 || len(throttled) != 1 {
		t.Fatalf("vendor saw %d requests (%d throttled), want 3 (1)", len(arrivals), len(throttled))
	}

	post := func(idempotencyKey string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://api.test/p", strings.NewReader(`{"n":1}`))
		req.Header.Set("apikey", "k2")
		if idempotencyKey != "" {
			req.Header.Set("Idempotency-Key", idempotencyKey)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err) // the test's own goroutine
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	time.Sleep(time.Until(v.start.Add(3 * time.Second))) // a fresh vendor window
	post("")                                             // spends it
	if code, body := post(""); code != http.StatusTooManyRequests || !strings.Contains(body, "CONN_THROTTLED") {
		t.Fatalf("throttled POST without Idempotency-Key: %d %s, want the 429 (never replayed)", code, body)
	}
	time.Sleep(time.Until(v.start.Add(5 * time.Second)))
	post("")
	if code, _ := post("op-1"); code != 200 {
		t.Fatalf("throttled POST with Idempotency-Key: %d, want the retried success", code)
	}
	_, _, bodies := v.counts()
	last := bodies[len(bodies)-2:]
	if last[0] != `{"n":1}` || last[1] != `{"n":1}` {
		t.Errorf("replayed body %q, want the original twice", last)
	}
}

func TestRejectModeNeverScouts(t *testing.T) {
	v := newVendor(t, "closient", 1000, 10*time.Second)
	p := startProxy(t, vendorYAML(v, "closient", "limits: [100/1s]\nmode: reject\n"))
	c := p.client()
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- wantStatus(c, "http://api.test/x", "fresh-key", 200)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent first requests of a new key in reject mode (no scout wait): %v", err)
		}
	}
}

// TestLearnedQuotaIsKeptPerBucket: a GitHub-like upstream reports the
// search resource exhausted; search requests of the key are held while its
// core requests still go.
func TestLearnedQuotaIsKeptPerBucket(t *testing.T) {
	var searches atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-RateLimit-Limit", "10") // 5% of it, rounded up, is kept unused
		h.Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(60*time.Second).Unix(), 10))
		if strings.HasPrefix(r.URL.Path, "/search") {
			n := searches.Add(1)
			h.Set("X-RateLimit-Resource", "search")
			h.Set("X-RateLimit-Remaining", strconv.Itoa(max(int(3-n), 0)))
		} else {
			h.Set("X-RateLimit-Resource", "core")
			h.Set("X-RateLimit-Limit", "5000")
			h.Set("X-RateLimit-Remaining", "4990")
		}
		io.WriteString(w, "ok")
	}))
	defer up.Close()
	p := startProxy(t, fmt.Sprintf(`upstreams:
  - profile: github
    hosts: [api.test]
    connect_to: %s
    mode: reject
`, up.Listener.Addr()))
	c := p.client()
	auth := func(path string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://api.test"+path, nil)
		req.Header.Set("Authorization", "Bearer ghp_x")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for i := range 2 {
		if code, body := auth("/search/code"); code != 200 {
			t.Fatalf("search %d: %d %s", i, code, body)
		}
	}
	code, body := auth("/search/code")
	if code != http.StatusTooManyRequests || !strings.Contains(body, `"source":"proxy"`) {
		t.Fatalf("search with its resource exhausted: %d %s, want the proxy's 429", code, body)
	}
	if n := searches.Load(); n != 2 {
		t.Errorf("upstream saw %d searches, want 2", n)
	}
	for i := range 3 {
		if code, body := auth("/repos/a/b"); code != 200 {
			t.Fatalf("core request %d while search is held: %d %s", i, code, body)
		}
	}
}

// push runs clients goroutines, each sending GETs with apikey key until ctx
// ends, and counts the 200s and the other answers.
func push(ctx context.Context, c *http.Client, clients int, url, key string) (ok, other int64) {
	var okN, otherN atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				req.Header.Set("apikey", key)
				resp, err := c.Do(req)
				if err != nil {
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					okN.Add(1)
				} else {
					otherN.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return okN.Load(), otherN.Load()
}
