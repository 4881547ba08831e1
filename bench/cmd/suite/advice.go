package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
)

// adviceVendor is a vendor API as the advice rows imitate it: its quota with
// the window scaled down, how it says "slow down", and the client loop its
// documentation advises.
type adviceVendor struct {
	name      string        // Clari
	profile   string        // the proxy's built-in profile
	published string        // the quota as the vendor publishes it
	n         int           // requests per window, scaled
	w         time.Duration // the window, scaled
	realW     time.Duration // the window the vendor publishes (or the bench assumes)
	advice    string        // the advised client loop, as the table names it
}

// scale is scaled time over real time: every wait the advice names is
// multiplied by it, as the window is.
func (v *adviceVendor) scale() float64 { return float64(v.w) / float64(v.realW) }

func (v *adviceVendor) scaled(d time.Duration) time.Duration {
	return time.Duration(float64(d) * v.scale()).Round(time.Millisecond)
}

func (v *adviceVendor) quota() string { return fmt.Sprintf("%d/%v", v.n, v.w) }

// margin is the proxy's default window_margin for the real window (1%, at
// least 10 ms, at most 1 s), scaled as the window is, and at least 2 ms.
func (v *adviceVendor) margin() time.Duration {
	return max(v.scaled(min(max(v.realW/100, 10*time.Millisecond), time.Second)), 2*time.Millisecond)
}

func adviceVendors() []*adviceVendor {
	return []*adviceVendor{
		{name: "Clari", profile: "clari", published: "not published (assumed 60/1m)", n: 60, w: time.Second, realW: time.Minute,
			advice: "on 429 sleep Retry-After, else min(5 s x 1.5^attempt, 60 s)"},
		{name: "Clarifai", profile: "clarifai", published: "15/1s", n: 15, w: 50 * time.Millisecond, realW: time.Second,
			advice: "on CONN_THROTTLED sleep 15 s"},
		{name: "Closient", profile: "closient", published: "300/1m", n: 60, w: time.Second, realW: time.Minute,
			advice: "governor: pause until reset when Remaining/Limit < 5%; on 429 Retry-After + jitter"},
	}
}

// credential sets the key on a request the way the vendor documents.
func (v *adviceVendor) credential(r *http.Request, key string) {
	switch v.profile {
	case "clari":
		r.Header.Set("apikey", key)
	case "clarifai":
		r.Header.Set("Authorization", "Key "+key)
	case "closient":
		r.Header.Set("X-API-Key", key)
	}
}

func (v *adviceVendor) credentialOf(r *http.Request) string {
	switch v.profile {
	case "clari":
		return r.Header.Get("apikey")
	case "clarifai":
		k, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Key ")
		return k
	}
	return r.Header.Get("X-API-Key")
}

// path is the request the job repeats: Clari polls an export job,
// Clarifai lists models, Closient crawls a paginated list.
func (v *adviceVendor) path(i int64) string {
	switch v.profile {
	case "clari":
		return fmt.Sprintf("/v4/export/jobs/job-%d", i)
	case "clarifai":
		return "/v2/models?page=" + strconv.FormatInt(i, 10)
	}
	return fmt.Sprintf("/products/api/v1/products?page=%d&page_size=25", i)
}

// throttled reports whether an answer is the vendor's throttle.
func (v *adviceVendor) throttled(status int, body []byte) bool {
	if v.profile == "clarifai" {
		var b struct {
			Status struct {
				Code any `json:"code"`
			} `json:"status"`
		}
		if json.Unmarshal(body, &b) == nil {
			if c := fmt.Sprint(b.Status.Code); c == "CONN_THROTTLED" || c == "11005" {
				return true
			}
		}
	}
	return status == http.StatusTooManyRequests
}

// seconds formats a wait in seconds, rounded up to the millisecond: scaled
// waits are fractions of a second (whole seconds would be whole windows).
func seconds(d time.Duration) string {
	return strconv.FormatFloat(math.Ceil(max(d.Seconds(), 0)*1000)/1000, 'f', 3, 64)
}

// vendorUpstream answers as the vendor does. Its quota is a fixed window per
// key that opens with the first request after the previous one expired (a
// counter with an expiry, as most vendors keep it); throttled requests do
// not count.
type vendorUpstream struct {
	v    *adviceVendor
	mu   sync.Mutex
	keys map[string]*vendorKey
}

type vendorKey struct {
	first, start time.Time // first window, current window
	count        int       // accepted in the current window
	windows      int
	accepted     int
	throttled    int
}

func (u *vendorUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := u.v.credentialOf(r)
	if key == "" {
		http.Error(w, "missing credential", http.StatusUnauthorized)
		return
	}
	now := time.Now()
	u.mu.Lock()
	k := u.keys[key]
	if k == nil {
		k = &vendorKey{}
		u.keys[key] = k
	}
	if k.windows == 0 || now.Sub(k.start) >= u.v.w {
		if k.windows == 0 {
			k.first = now
		}
		k.start, k.count = now, 0
		k.windows++
	}
	ok := k.count < u.v.n
	if ok {
		k.count++
		k.accepted++
	} else {
		k.throttled++
	}
	remaining, reset := u.v.n-k.count, k.start.Add(u.v.w).Sub(now)
	u.mu.Unlock()

	h := w.Header()
	h.Set("Content-Type", "application/json")
	switch u.v.profile {
	case "clari":
		if !ok {
			h.Set("Retry-After", seconds(reset))
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"message":"Too many requests"}`)
			return
		}
		io.WriteString(w, `{"jobId":"job","status":"COMPLETED"}`)
	case "clarifai":
		if !ok { // in a 200, the body only, no Retry-After
			io.WriteString(w, `{"status":{"code":"CONN_THROTTLED","description":"Making too many requests","details":"exceeded limit of 15 requests per second","req_id":"bench"}}`)
			return
		}
		io.WriteString(w, `{"status":{"code":10000,"description":"Ok"},"models":[]}`)
	case "closient":
		h.Set("RateLimit-Policy", fmt.Sprintf("%d;w=%s", u.v.n, strconv.FormatFloat(u.v.w.Seconds(), 'f', -1, 64)))
		h.Set("RateLimit-Limit", strconv.Itoa(u.v.n))
		h.Set("RateLimit-Remaining", strconv.Itoa(remaining))
		h.Set("RateLimit-Reset", seconds(reset))
		if !ok {
			h.Set("Retry-After", seconds(reset))
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprintf(w, `{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded.","status":429,"details":{"retry_after_seconds":%s}}}`, seconds(reset))
			return
		}
		io.WriteString(w, `{"data":[],"pagination":{"page":1,"page_size":25,"total_count":0,"total_pages":0,"has_next":false,"has_previous":false}}`)
	}
}

// take returns what the upstream saw for key: accepted, throttled, and the
// time from the first window's start to the end of the last one.
func (u *vendorUpstream) take(key string) (accepted, throttled, windows int, span time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	k := u.keys[key]
	if k == nil {
		return 0, 0, 0, 0
	}
	return k.accepted, k.throttled, k.windows, k.start.Add(u.v.w).Sub(k.first)
}

// adviceRun is one row: a vendor's job, run with its advised loop direct to
// the upstream or with plain clients through ratelimit-proxy.
type adviceRun struct {
	v         *adviceVendor
	proxied   bool
	clients   int
	job       int
	done      int64 // requests that ended in a success
	failed    int64 // requests that ended in an error (given up, transport error, non-2xx)
	seen      int64 // throttles and other non-2xx answers the clients' code saw
	elapsed   time.Duration
	finished  bool
	cap       time.Duration
	accepted  int // at the upstream
	throttles int // sent by the upstream
	windows   int
	util      float64
	waits     map[string]int // advice: the waits the loop took, by reason
	slept     time.Duration  // advice: the clients' sleeps, summed
	foreign   float64
	skipped   string
}

func (b *bench) adviceJob() (job, clients int, limit time.Duration) {
	if b.smoke {
		return 90, 4, 15 * time.Second
	}
	return 600, 4, 60 * time.Second
}

func (b *bench) runAdvice() ([]adviceRun, error) {
	vendors := adviceVendors()
	ups := map[string]*vendorUpstream{}
	addrs := map[string]string{}
	for _, v := range vendors {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		u := &vendorUpstream{v: v, keys: map[string]*vendorKey{}}
		srv := &http.Server{Handler: u}
		go srv.Serve(ln)
		defer srv.Close()
		ups[v.profile], addrs[v.profile] = u, ln.Addr().String()
	}

	cfg := "listen: 127.0.0.1:0\ndata_dir: " + b.work + "/advice\nlog: {level: warn}\nupstreams:\n"
	for _, v := range vendors {
		prof, err := config.Profile(v.profile)
		if err != nil {
			return nil, err
		}
		if len(prof.Hosts) == 0 {
			return nil, fmt.Errorf("profile %s names no host", v.profile)
		}
		cfg += fmt.Sprintf("  - name: advice-%s\n    profile: %s\n    hosts: [%s]\n    connect_to: %s\n    limits: [%s]\n    mode: queue\n    max_wait: 60s\n    max_queue: 10000\n    window_margin: %v\n    throttle: {default_wait: %v, min_wait: %v, max_wait: 60s}\n",
			v.profile, v.profile, prof.Hosts[0], addrs[v.profile], v.quota(), v.margin(),
			max(v.scaled(time.Duration(prof.Throttle.DefaultWait)), time.Millisecond), max(v.scaled(time.Second), time.Millisecond))
	}
	p, addr, _, err := startOurs("ratelimit-proxy (advice)", b.bin("ratelimit-proxy"), b.work+"/advice", cfg)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	proxyURL, _ := url.Parse("http://" + addr)

	job, clients, limit := b.adviceJob()
	var out []adviceRun
	for _, v := range vendors {
		prof, _ := config.Profile(v.profile)
		for _, proxied := range []bool{false, true} {
			b.waitQuiet()
			cs := sampleCPU()
			r := adviceRun{v: v, proxied: proxied, clients: clients, job: job, cap: limit, waits: map[string]int{}}
			key := "advice-" + v.profile
			base := "http://" + addrs[v.profile]
			var tr *http.Transport
			if proxied {
				key = "proxy-" + v.profile
				base = "http://" + prof.Hosts[0]
				tr = &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: clients, DisableCompression: true}
			} else {
				tr = &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
			}
			b.adviceRun(&r, &http.Client{Transport: tr, Timeout: limit}, base, key)
			tr.CloseIdleConnections()
			r.foreign = cs.foreign()
			var span time.Duration
			r.accepted, r.throttles, r.windows, span = ups[v.profile].take(key)
			if span > 0 {
				r.util = float64(r.accepted) / (float64(v.n) * span.Seconds() / v.w.Seconds())
			}
			if r.accepted == 0 {
				r.skipped = "no request reached the upstream"
			}
			limited := ""
			if !r.finished {
				limited = " (unfinished)"
			}
			b.logf("advice %-8s %-7s %-8s done %d/%d in %.2fs%s  upstream throttles %d  util %.3f  non-2xx seen %d  failed %d  foreign %.2f cores",
				v.name, v.quota(), adviceMode(proxied), r.done, r.job, r.elapsed.Seconds(), limited,
				r.throttles, r.util, r.seen, r.failed, r.foreign)
			out = append(out, r)
		}
	}
	return out, nil
}

func adviceMode(proxied bool) string {
	if proxied {
		return "proxy"
	}
	return "advice"
}

// adviceRun runs the job: r.clients goroutines take requests from one
// counter until r.job were taken. Direct, each request is retried as the
// vendor advises (at most 50 attempts); through the proxy it is sent once.
// The whole run is bounded by r.cap.
func (b *bench) adviceRun(r *adviceRun, client *http.Client, base, key string) {
	const maxAttempts = 50
	v := r.v
	ctx, cancel := context.WithTimeout(context.Background(), r.cap)
	defer cancel()
	var (
		next, done, failed, seen atomic.Int64
		mu                       sync.Mutex
	)
	wait := func(reason string, d time.Duration) bool {
		mu.Lock()
		r.waits[reason]++
		r.slept += d
		mu.Unlock()
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	send := func(i int64) (int, http.Header, []byte, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+v.path(i), nil)
		v.credential(req, key)
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, nil, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		return resp.StatusCode, resp.Header, body, err
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range r.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := next.Add(1)
				if i > int64(r.job) {
					return
				}
				for attempt := 0; ; attempt++ {
					status, h, body, err := send(i)
					if err != nil {
						if ctx.Err() == nil {
							failed.Add(1)
						}
						break
					}
					throttle := v.throttled(status, body)
					if !throttle && status/100 == 2 {
						done.Add(1)
						if !r.proxied && v.profile == "closient" {
							// The informed governor: below 5% of the
							// limit left, pause until the reset.
							lim, _ := strconv.ParseFloat(h.Get("RateLimit-Limit"), 64)
							rem, err := strconv.ParseFloat(h.Get("RateLimit-Remaining"), 64)
							if lim > 0 && err == nil && rem/lim < 0.05 {
								if reset, ok := secondsHeader(h, "RateLimit-Reset"); ok {
									wait("governor pauses", reset)
								}
							}
						}
						break
					}
					seen.Add(1)
					if r.proxied || !throttle || attempt+1 >= maxAttempts {
						failed.Add(1)
						break
					}
					reason, d := v.adviceWait(h, attempt)
					if !wait(reason, d) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	r.done, r.failed, r.seen = done.Load(), failed.Load(), seen.Load()
	r.finished = ctx.Err() == nil && r.done+r.failed == int64(r.job)
}

// adviceWait is the vendor's advised wait after a throttle, scaled.
func (v *adviceVendor) adviceWait(h http.Header, attempt int) (string, time.Duration) {
	switch v.profile {
	case "clari":
		if d, ok := secondsHeader(h, "Retry-After"); ok {
			return "Retry-After waits", d
		}
		return "backoffs without Retry-After", v.scaled(min(time.Duration(float64(5*time.Second)*math.Pow(1.5, float64(attempt))), time.Minute))
	case "clarifai":
		return fmt.Sprintf("fixed 15 s sleeps (%v scaled)", v.scaled(15*time.Second)), v.scaled(15 * time.Second)
	}
	// Closient: exponential backoff with full jitter on top of
	// Retry-After; base 1 s, cap 30 s (the vendor names neither).
	ra, _ := secondsHeader(h, "Retry-After")
	ceiling := v.scaled(min(time.Second<<min(attempt, 10), 30*time.Second))
	return "Retry-After + jitter waits", ra + time.Duration(rand.Int64N(int64(ceiling)+1))
}

// secondsHeader reads a header of (possibly fractional) seconds.
func secondsHeader(h http.Header, name string) (time.Duration, bool) {
	f, err := strconv.ParseFloat(strings.TrimSpace(h.Get(name)), 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, false
	}
	return time.Duration(f * float64(time.Second)), true
}
