package proxy_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// engagorVendor is an Engagor-like vendor: fixed windows of w aligned on
// its own clock, which reads skew ahead of ours; n requests each, then a
// 400 rate_limit_reached. Every answer carries X-RateLimit-Limit,
// -Remaining and -Reset (epoch seconds: the window's end, exactly) and a
// Date in whole seconds, both from its clock. No X-RateLimit-Time: the
// proxy learns no window of its own, so every refusal is about the
// vendor's reset.
type engagorVendor struct {
	n    int
	w    time.Duration
	skew time.Duration

	mu        sync.Mutex
	used      map[int64]int
	throttled []time.Time // our clock
}

func (v *engagorVendor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now().Add(v.skew)
	idx := now.UnixNano() / int64(v.w)
	end := time.Unix(0, (idx+1)*int64(v.w))
	v.mu.Lock()
	throttle := v.used[idx] >= v.n
	if throttle {
		v.throttled = append(v.throttled, now.Add(-v.skew))
	} else {
		v.used[idx]++
	}
	remaining := v.n - v.used[idx]
	v.mu.Unlock()
	h := w.Header()
	h.Set("Date", now.UTC().Format(http.TimeFormat))
	h.Set("X-RateLimit-Limit", strconv.Itoa(v.n))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(end.Unix(), 10))
	h.Set("Content-Type", "application/json")
	if throttle {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"rate_limit_reached","error_description":"Rate limit reached."}`)
		return
	}
	io.WriteString(w, `{"response":"ok"}`)
}

// resetAfter is the instant, on our clock, at which the vendor's window
// holding our instant t ends.
func (v *engagorVendor) resetAfter(t time.Time) time.Time {
	idx := t.Add(v.skew).UnixNano() / int64(v.w)
	return time.Unix(0, (idx+1)*int64(v.w)).Add(-v.skew)
}

// TestLocal429sPointAtTheVendorsReset runs clients through the proxy in
// reject mode against an Engagor-like vendor whose windows end on whole
// seconds. The proxy learns each window's end from X-RateLimit-Reset
// (epoch seconds) and Date (whole seconds). Every local 429's
// Retry-After, read from when the client got it, never points before the
// vendor's reset, and at most the whole-second rounding after it (plus
// the hold's allowed lateness: 100 ms when the clocks agree, 1 s when the
// vendor's clock is 30 s off); the vendor never throttles.
//
// Real time, so only the lower bound is exact: a refusal decided after
// the client sent its request points at or after the reset of the window
// it was sent in (or, sent within the allowed lateness after a reset, of
// the window before). The upper bound allows loadSlack for the time
// between the proxy's decision and the client reading it.
func TestLocal429sPointAtTheVendorsReset(t *testing.T) {
	const n, w, windows = 5, 2 * time.Second, 3
	const loadSlack = 300 * time.Millisecond
	tests := []struct {
		name string
		skew time.Duration
		late time.Duration // how late the hold may end after the reset
	}{
		{"clocks agree", 0, 100 * time.Millisecond},
		{"vendor 30s ahead", 30 * time.Second, time.Second},
		{"vendor 30.4s behind", -30400 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v := &engagorVendor{n: n, w: w, skew: tt.skew, used: map[int64]int{}}
			up := httptest.NewServer(v)
			t.Cleanup(up.Close)
			p := startProxy(t, `upstreams:
  - profile: engagor
    hosts: [api.test]
    connect_to: `+up.Listener.Addr().String()+`
    limits: [1000/1s]
    mode: reject
`)
			type answer struct {
				sent, got  time.Time
				status     int
				local      bool
				retryAfter string
			}
			var mu sync.Mutex
			var answers []answer
			var errs []error
			// Start well into one of the vendor's windows: the proxy first
			// hears of each window at a fraction of a second.
			start := v.resetAfter(time.Now()).Add(550 * time.Millisecond)
			end := start.Add(windows * w)
			time.Sleep(time.Until(start))
			var wg sync.WaitGroup
			// Three clients at odd offsets and paces, so that answers fall
			// at every fraction of a second.
			for _, c := range []struct{ offset, every time.Duration }{
				{0, 70 * time.Millisecond},
				{230 * time.Millisecond, 110 * time.Millisecond},
				{470 * time.Millisecond, 130 * time.Millisecond},
			} {
				client := p.client()
				wg.Go(func() {
					time.Sleep(c.offset)
					for time.Now().Before(end) {
						sent := time.Now()
						resp, err := client.Get("http://api.test/v1/me?access_token=tok")
						if err != nil {
							mu.Lock()
							errs = append(errs, err)
							mu.Unlock()
							return
						}
						body, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						mu.Lock()
						answers = append(answers, answer{sent, time.Now(), resp.StatusCode, strings.Contains(string(body), `"source":"proxy"`), resp.Header.Get("Retry-After")})
						mu.Unlock()
						time.Sleep(c.every)
					}
				})
			}
			wg.Wait()
			for _, err := range errs {
				t.Errorf("client: %v", err)
			}
			locals := 0
			var lates []time.Duration
			for _, a := range answers {
				if a.status != http.StatusTooManyRequests || !a.local {
					continue
				}
				locals++
				ra, err := strconv.Atoi(a.retryAfter)
				if err != nil || ra < 1 {
					t.Errorf("local 429 at %v: Retry-After %q, want an integer >= 1", a.got.Format("15:04:05.000"), a.retryAfter)
					continue
				}
				retry := a.got.Add(time.Duration(ra) * time.Second)
				// The reset a refusal waits for: the end of the window the
				// client got it in or, for a request sent within the hold's
				// allowed lateness after a reset, that reset.
				reset := v.resetAfter(a.got)
				if early := v.resetAfter(a.sent.Add(-tt.late)); retry.Before(reset) {
					reset = early
				}
				switch late := retry.Sub(reset); {
				case late < 0:
					t.Errorf("local 429 sent at %v: Retry-After %d points %v before the vendor's reset at %v",
						a.sent.Format("15:04:05.000"), ra, -late, reset.Format("15:04:05.000"))
				case late > tt.late+time.Second+loadSlack:
					t.Errorf("local 429 got at %v: Retry-After %d points %v after the vendor's reset at %v, want at most %v",
						a.got.Format("15:04:05.000"), ra, late, reset.Format("15:04:05.000"), tt.late+time.Second+loadSlack)
				default:
					lates = append(lates, late.Round(time.Millisecond))
				}
			}
			if locals < 10 {
				t.Errorf("%d local 429s: the test did not exercise the holds", locals)
			}
			v.mu.Lock()
			if len(v.throttled) > 0 {
				t.Errorf("the vendor throttled %d requests (first at %v): a hold ended before its reset", len(v.throttled), v.throttled[0].Format("15:04:05.000"))
			}
			v.mu.Unlock()
			if len(lates) == 0 {
				return
			}
			slices.Sort(lates)
			t.Logf("%d answers, %d local 429s; Retry-After minus the vendor's reset: min %v, median %v, max %v",
				len(answers), locals, lates[0], lates[len(lates)/2], lates[len(lates)-1])
		})
	}
}
