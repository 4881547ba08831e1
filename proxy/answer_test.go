package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// throttler is an upstream that answers ok until throttle is set, then
// with the throttle's status, headers and body.
func throttler(t *testing.T, status int, header http.Header, body string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// answerOf sends one GET with the given credential header through the
// proxy and returns the answer, its body decoded when it is JSON, and
// when it was sent and read.
type answerOf struct {
	status     int
	header     http.Header
	body       string
	json       map[string]any
	sent, got  time.Time
	retryAfter int
	next       *answerOf // the answer after, on the same key
}

func ask(t *testing.T, c *http.Client, credHeader, cred string) answerOf {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://api.test/v1/x", nil)
	req.Header.Set(credHeader, cred)
	a := answerOf{sent: time.Now()}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	a.got, a.status, a.header, a.body = time.Now(), resp.StatusCode, resp.Header, string(b)
	json.Unmarshal(b, &a.json)
	a.retryAfter, _ = strconv.Atoi(resp.Header.Get("Retry-After"))
	return a
}

// checkUniform checks the form every 429 of the proxy has: status 429, an
// integer Retry-After >= 1, and RateLimit naming an item RateLimit-Policy
// lists (both present or both absent).
func checkUniform(t *testing.T, a answerOf) {
	t.Helper()
	if a.status != http.StatusTooManyRequests {
		t.Fatalf("status %d %s, want 429", a.status, a.body)
	}
	if ra := a.header.Get("Retry-After"); a.retryAfter < 1 || strconv.Itoa(a.retryAfter) != ra {
		t.Errorf("Retry-After %q, want an integer >= 1", ra)
	}
	policy, rl := a.header.Get("RateLimit-Policy"), a.header.Get("RateLimit")
	if (policy == "") != (rl == "") {
		t.Errorf("RateLimit-Policy %q and RateLimit %q: want both or neither", policy, rl)
	}
	if rl == "" {
		return
	}
	var items []string
	for _, m := range strings.Split(policy, ",") {
		item, _, _ := strings.Cut(strings.TrimSpace(m), ";")
		items = append(items, item)
	}
	named, params, _ := strings.Cut(rl, ";")
	found := false
	for _, it := range items {
		found = found || it == named
	}
	if !found {
		t.Errorf("RateLimit %q names %s, which RateLimit-Policy %q does not list", rl, named, policy)
	}
	if want := "r=0;t=" + strconv.Itoa(a.retryAfter); params != want {
		t.Errorf("RateLimit %q: want %s (nothing left until Retry-After)", rl, want)
	}
}

// TestEvery429HasTheUniformForm: the proxy's own 429 (over its limits, or
// during a hold the vendor asked for) and a rewritten vendor throttle
// carry the same form, with or without local limits; without them no
// RateLimit policy item is invented.
func TestEvery429HasTheUniformForm(t *testing.T) {
	vendorHeaders := http.Header{"Retry-After": {"2"}, "Retry-After-Ms": {"300"}, "X-Vendor": {"kept"}}
	tests := []struct {
		name       string
		limits     string
		wantPolicy bool
	}{
		{"with local limits", "limits: [50/1m, 1000/1d]\n", true},
		{"without local limits", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := throttler(t, http.StatusTooManyRequests, vendorHeaders, `{"error":"slow down"}`)
			p := startProxy(t, fmt.Sprintf(`upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
    mode: reject
%s`, up.Listener.Addr(), indent(tt.limits, "    ")))
			c := p.client()
			rewritten := ask(t, c, "apikey", "k")
			checkUniform(t, rewritten)
			if rewritten.header.Get("X-Vendor") != "kept" || rewritten.header.Get("X-RateLimit-Proxy-Upstream-Status") != "429" {
				t.Errorf("rewritten throttle lost the vendor's headers: %v", rewritten.header)
			}
			if ms := rewritten.header.Values("Retry-After-Ms"); len(ms) != 1 || ms[0] != "2000" {
				t.Errorf("retry-after-ms %q beside Retry-After %d, want the proxy's wait, 2000 (never the vendor's stale 300)", ms, rewritten.retryAfter)
			}
			held := ask(t, c, "apikey", "k") // the vendor asked the key to wait
			checkUniform(t, held)
			if !strings.Contains(held.body, `"source":"proxy"`) {
				t.Errorf("during the hold: %s, want the proxy's own 429", held.body)
			}
			for _, a := range []answerOf{rewritten, held} {
				if got := a.header.Get("RateLimit-Policy") != ""; got != tt.wantPolicy {
					t.Errorf("RateLimit-Policy %q, want present: %v", a.header.Get("RateLimit-Policy"), tt.wantPolicy)
				}
			}
		})
	}

	t.Run("over the local limit", func(t *testing.T) {
		p := startProxy(t, upstreamYAML(newRecorder(t, false), "limits: [1/1m, 1000/1d]\nmode: reject\n"))
		c := p.client()
		if a := ask(t, c, "apikey", "k"); a.status != 200 {
			t.Fatalf("first request: %d %s", a.status, a.body)
		}
		a := ask(t, c, "apikey", "k")
		checkUniform(t, a)
		if rl := a.header.Get("RateLimit"); !strings.HasPrefix(rl, `"1/1m";`) {
			t.Errorf("RateLimit %q, want the binding limit 1/1m", rl)
		}
	})
}

// TestAnswersCarryWhatEachVendorsSDKLooksFor: for each profile, the
// proxy's own 429 and a rewritten throttle carry what that vendor's SDKs
// read, beside the uniform form.
func TestAnswersCarryWhatEachVendorsSDKLooksFor(t *testing.T) {
	type check func(t *testing.T, a answerOf, local bool)
	header := func(name, want string) check {
		return func(t *testing.T, a answerOf, _ bool) {
			if got := a.header.Get(name); got != want {
				t.Errorf("%s: %q, want %q", name, got, want)
			}
		}
	}
	field := func(path string, want any) check {
		return func(t *testing.T, a answerOf, local bool) {
			if !local {
				return // the vendor's own body is kept
			}
			var v any = a.json
			for _, k := range strings.Split(path, ".") {
				m, _ := v.(map[string]any)
				v = m[k]
			}
			if v != want {
				t.Errorf("body %s = %#v, want %#v in %s", path, v, want, a.body)
			}
		}
	}
	waitMs := func(t *testing.T, a answerOf, local bool) {
		ms, err := strconv.Atoi(a.header.Get("retry-after-ms"))
		switch {
		case err != nil:
			t.Errorf("retry-after-ms %q, want the exact wait in ms", a.header.Get("retry-after-ms"))
		case !local && ms != 1500:
			t.Errorf("retry-after-ms %d on a rewritten throttle, want the proxy's hold, 1500", ms)
		case local && (ms <= (a.retryAfter-1)*1000 || ms > a.retryAfter*1000):
			t.Errorf("retry-after-ms %d, want the wait Retry-After %d rounds up", ms, a.retryAfter)
		}
		if local || a.next == nil {
			return
		}
		// During the 1.5 s hold the vendor asked for, the proxy's own 429
		// says exactly what is left of it.
		h := a.next
		ms, _ = strconv.Atoi(h.header.Get("retry-after-ms"))
		lo := a.sent.Add(1500 * time.Millisecond).Sub(h.got).Milliseconds()
		hi := a.got.Add(1500*time.Millisecond).Sub(h.sent).Milliseconds() + 1
		if int64(ms) < lo || int64(ms) > hi {
			t.Errorf("during the hold: retry-after-ms %q, want the exact wait, %d to %d", h.header.Get("retry-after-ms"), lo, hi)
		}
	}
	reset := func(t *testing.T, a answerOf, _ bool) {
		r, err := strconv.ParseInt(a.header.Get("x-ratelimit-reset"), 10, 64)
		// The reset is when the wait ends, rounded up to a whole second.
		if lo, hi := a.sent.Unix(), a.got.Add(time.Duration(a.retryAfter)*time.Second).Unix()+1; err != nil || r < lo || r > hi {
			t.Errorf("x-ratelimit-reset %q, want Unix seconds in [%d, %d]", a.header.Get("x-ratelimit-reset"), lo, hi)
		}
	}
	tests := []struct {
		profile    string
		credHeader string
		cred       string
		extra      string
		status     int // the vendor's throttle
		header     http.Header
		body       string
		checks     []check
	}{
		{"github", "Authorization", "Bearer ghp_x", "", 403,
			http.Header{"X-Ratelimit-Remaining": {"0"}, "X-Ratelimit-Reset": {strconv.FormatInt(time.Now().Add(2*time.Second).Unix(), 10)}},
			`{"message":"API rate limit exceeded"}`,
			[]check{header("x-ratelimit-remaining", "0"), reset}},
		{"stripe", "Authorization", "Bearer sk_live_x", "", 429, nil, `{"error":{"type":"rate_limit_error"}}`,
			[]check{header("Stripe-Should-Retry", "true")}},
		{"openai", "Authorization", "Bearer sk-x", "", 429, http.Header{"Retry-After-Ms": {"1500"}},
			`{"error":{"type":"requests","code":"rate_limit_exceeded"}}`, []check{waitMs}},
		{"anthropic", "x-api-key", "sk-ant-x", "", 429, http.Header{"Retry-After-Ms": {"1500"}},
			`{"type":"error","error":{"type":"rate_limit_error"}}`, []check{waitMs}},
		{"clarifai", "Authorization", "Key pat", "", 200, nil,
			`{"status":{"code":"CONN_THROTTLED","description":"Making too many requests"}}`,
			[]check{field("status.code", "CONN_THROTTLED"), field("status.description", "Making too many requests"), field("error.source", "proxy")}},
		{"clarifai", "Authorization", "Key pat", "answer:\n  body:\n    status: {code: 11005, description: Making too many requests}\n", 200, nil,
			`{"status":{"code":11005,"description":"Making too many requests"}}`,
			[]check{field("status.code", 11005.0)}},
		{"closient", "X-API-Key", "ck", "", 429, http.Header{"Retry-After": {"2"}},
			`{"error":{"code":"RATE_LIMITED","status":429,"details":{"retry_after_seconds":2}}}`,
			[]check{field("error.status", 429.0), field("error.code", "RATE_LIMITED"), field("error.source", "proxy"),
				func(t *testing.T, a answerOf, local bool) {
					if d, _ := a.json["error"].(map[string]any)["details"].(map[string]any); local && d["retry_after_seconds"] != float64(a.retryAfter) {
						t.Errorf("error.details.retry_after_seconds %v, want Retry-After %d as a number: %s", d["retry_after_seconds"], a.retryAfter, a.body)
					}
				}}},
	}
	for _, tt := range tests {
		name := tt.profile
		if tt.extra != "" {
			name += " with its answer overridden"
		}
		t.Run(name, func(t *testing.T) {
			// The proxy's own 429: over a local limit of 1 per 30 s.
			rec := newRecorder(t, false)
			p := startProxy(t, fmt.Sprintf(`upstreams:
  - profile: %s
    hosts: [api.test]
    connect_to: %s
    limits: [1/30s]
    window_margin: 250ms
    mode: reject
%s`, tt.profile, rec.addr(), indent(tt.extra, "    ")))
			c := p.client()
			first := ask(t, c, tt.credHeader, tt.cred)
			if first.status != 200 {
				t.Fatalf("first request: %d %s", first.status, first.body)
			}
			local := ask(t, c, tt.credHeader, tt.cred)
			checkUniform(t, local)
			for _, ck := range tt.checks {
				ck(t, local, true)
			}

			// A vendor throttle, rewritten.
			up := throttler(t, tt.status, tt.header, tt.body)
			p = startProxy(t, fmt.Sprintf(`upstreams:
  - profile: %s
    hosts: [api.test]
    connect_to: %s
    mode: reject
%s`, tt.profile, up.Listener.Addr(), indent(tt.extra, "    ")))
			rewritten := ask(t, p.client(), tt.credHeader, tt.cred)
			checkUniform(t, rewritten)
			held := ask(t, p.client(), tt.credHeader, tt.cred) // during the vendor's hold
			checkUniform(t, held)
			rewritten.next = &held
			if rewritten.header.Get("X-RateLimit-Proxy-Upstream-Status") != strconv.Itoa(tt.status) {
				t.Errorf("the vendor's %d was not recognised as a throttle: %v %s", tt.status, rewritten.header, rewritten.body)
			}
			for _, ck := range tt.checks {
				ck(t, rewritten, false)
			}
		})
	}
}
