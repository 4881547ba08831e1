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
	srv     *httptest.Server
	style   string // clarifai, engagor, closient
	quota   int
	window  time.Duration
	outside int // requests an outside caller spends at the start of each window
	start   time.Time

	mu        sync.Mutex
	used      map[int64]int
	penalty   time.Time // throttle everything until then
	arrivals  []time.Time
	throttled []time.Time
	bodies    []string
}

func newVendor(t *testing.T, style string, quota int, window time.Duration) *vendor {
	t.Helper()
	v := &vendor{style: style, quota: quota, window: window, start: time.Now(), used: map[int64]int{}}
	v.srv = httptest.NewServer(http.HandlerFunc(v.serve))
	t.Cleanup(v.srv.Close)
	return v
}

func (v *vendor) addr() string { return v.srv.Listener.Addr().String() }

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
	throttle := now.Before(v.penalty) || v.used[idx] >= v.quota
	if !throttle {
		v.used[idx]++
	} else {
		v.throttled = append(v.throttled, now)
	}
	remaining := max(v.quota-v.used[idx], 0)
	v.mu.Unlock()

	h := w.Header()
	resetIn := int(time.Until(windowEnd).Seconds()) + 1
	if now.Before(v.penalty) {
		resetIn = 1 // a vendor whose Retry-After is shorter than its penalty
	}
	switch v.style {
	case "engagor":
		h.Set("X-RateLimit-Limit", strconv.Itoa(v.quota))
		h.Set("X-RateLimit-Time", strconv.Itoa(int(v.window.Seconds())))
		h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(windowEnd.Unix()+1, 10))
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
		h.Set("X-RateLimit-Reset", strconv.FormatInt(windowEnd.Unix()+1, 10))
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

// TestCooldownAllowsOneProbePerPeriod: a vendor throttles everything for
// 2.5s and says Retry-After: 1. With 30 clients pushing, after the first
// throttle the vendor sees at most one more throttled request per second.
func TestCooldownAllowsOneProbePerPeriod(t *testing.T) {
	v := newVendor(t, "closient", 1000, 10*time.Second)
	v.penalty = time.Now().Add(2500 * time.Millisecond)
	p := startProxy(t, vendorYAML(v, "closient", "limits: [1000/1s]\nmax_wait: 10s\nlearn: {mode: off}\nthrottle: {min_wait: 100ms, retry: {max_attempts: 10}}\n"))
	c := p.client()
	ctx, cancel := context.WithTimeout(context.Background(), 3500*time.Millisecond)
	defer cancel()
	ok, refused := push(ctx, c, 30, "http://api.test/x", "k")
	_, throttled, _ := v.counts()
	if len(throttled) == 0 {
		t.Fatal("the vendor never throttled: the test did not exercise the cooldown")
	}
	// Requests in flight when the first throttle came back were already
	// sent; count what the vendor saw once the proxy had heard of it.
	first := throttled[0]
	var later []time.Duration
	for _, at := range throttled {
		if at.Sub(first) > 100*time.Millisecond {
			later = append(later, at.Sub(first).Round(time.Millisecond))
		}
	}
	periods := int(v.penalty.Sub(first)/time.Second) + 1
	if len(later) > periods {
		t.Errorf("after the first throttle the vendor throttled %d more requests (%v); want at most one per 1s cooldown (%d)", len(later), later, periods)
	}
	if ok == 0 {
		t.Error("no request succeeded after the vendor's penalty ended")
	}
	t.Logf("throttled at the vendor: %d in all, %d after the first (%v); clients: %d ok, %d refused", len(throttled), len(later), later, ok, refused)
}

// TestGovernorSharesTheQuotaWithAnOutsideCaller: the vendor's quota is also
// spent by another caller (40% at the start of each window). Reading the
// vendor's headers, the proxy costs at most 2 upstream throttles per window.
func TestGovernorSharesTheQuotaWithAnOutsideCaller(t *testing.T) {
	const quota, window, windows = 20, 2 * time.Second, 3
	v := newVendor(t, "closient", quota, window)
	v.outside = quota * 40 / 100
	p := startProxy(t, vendorYAML(v, "closient", fmt.Sprintf("limits: [%d/%v]\nmax_wait: 10s\nthrottle: {min_wait: 100ms}\n", quota, window)))
	c := p.client()
	ctx, cancel := context.WithTimeout(context.Background(), windows*window)
	defer cancel()
	ok, _ := push(ctx, c, 30, "http://api.test/x", "k")
	_, throttled, _ := v.counts()
	perWindow := map[int64]int{}
	for _, at := range throttled {
		perWindow[int64(at.Sub(v.start)/window)]++
	}
	for w, n := range perWindow {
		if n > 2 {
			t.Errorf("window %d: %d upstream throttles, want at most 2", w, n)
		}
	}
	// The share left to us is 12 per window: we should get most of it.
	if min := int64(windows * (quota - v.outside) * 7 / 10); ok < min {
		t.Errorf("%d successful requests in %d windows, want >= %d (70%% of the 12 per window left to us)", ok, windows, min)
	}
	t.Logf("throttles per window %v; %d successful requests", perWindow, ok)
}

// TestTransparentRetry: a throttled GET is waited out and retried by the
// proxy, so the client just sees the success; a POST is not replayed unless
// it carries an Idempotency-Key, and then with the same body.
func TestTransparentRetry(t *testing.T) {
	v := newVendor(t, "clarifai", 1, time.Second)
	p := startProxy(t, vendorYAML(v, "clarifai", "limits: [100/1s]\nmax_wait: 5s\nlearn: {mode: off}\nthrottle: {default_wait: 1s}\n"))
	c := p.client()
	get(t, c, "http://api.test/a", "k") // spends the vendor's window
	start := time.Now()
	code, body, _ := get(t, c, "http://api.test/b", "k")
	if code != 200 || !strings.Contains(body, `"Ok"`) {
		t.Fatalf("retried GET: %d %s, want the success", code, body)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
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
			t.Fatal(err)
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

// Review finding: a queued request whose slot a hold moves beyond max_wait
// is answered at once, not held for the hour the vendor asked for.
func TestQueuedRequestHeldBeyondMaxWaitIsAnsweredAtOnce(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer up.Close()
	p := startProxy(t, fmt.Sprintf(`upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [1/1s]
    window_margin: 10ms
    max_wait: 3s
    learn: {mode: off}
`, up.Listener.Addr()))
	c := p.client()
	first := make(chan error, 1)
	go func() { first <- wantStatus(c, "http://api.test/a", "k", http.StatusTooManyRequests) }()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	code, body, h := get(t, c, "http://api.test/b", "k") // queued for ~1s, then held for an hour
	if took := time.Since(start); code != http.StatusTooManyRequests || took > 2*time.Second {
		t.Fatalf("queued request under a 1h hold: %d after %v (%s), want 429 within 2s", code, took, body)
	}
	if ra, _ := strconv.Atoi(h.Get("Retry-After")); ra < 3500 {
		t.Errorf("Retry-After %q, want about an hour", h.Get("Retry-After"))
	}
	if err := <-first; err != nil {
		t.Errorf("the throttled request itself: %v", err)
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
