package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sdkDir is the npm project of the SDK tests (package.json and its lock
// file pin the SDKs; scripts/deps.sh sdk installs them).
const sdkDir = "testdata/sdk"

// debianPython is the Python that Debian's python3-requests belongs to.
const debianPython = "/usr/bin/python3"

// missingDep skips a test whose tool is missing, saying so, or fails it
// under CI, where the install step must have provided it.
func missingDep(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is missing: the test command must install it (bash scripts/deps.sh sdk)", what)
	}
	t.Skipf("%s is missing (NO_INSTALL=1?): skipped; bash scripts/deps.sh sdk installs it", what)
}

// needSDKs returns the node command, once a Node.js of at least 20 and
// every npm package of sdkDir are there. It prefers the Node.js the install
// step put into sdkDir when the machine's was older (scripts/deps.sh).
func needSDKs(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if local, _ := filepath.Glob(filepath.Join(sdkDir, ".node", "node_modules", "node-linux-*", "bin", "node")); len(local) > 0 {
		node, err = filepath.Abs(local[0]) // the clients run in sdkDir
	}
	if err != nil {
		missingDep(t, "node")
	}
	out, err := exec.Command(node, "-p", `process.versions.node.split(".")[0]`).Output()
	if major, _ := strconv.Atoi(strings.TrimSpace(string(out))); err != nil || major < 20 {
		missingDep(t, "Node.js 20 or newer (found "+node+", major "+strings.TrimSpace(string(out))+")")
	}
	for _, pkg := range []string{"@octokit/rest", "@octokit/plugin-throttling", "stripe", "openai", "undici", "https-proxy-agent"} {
		if _, err := os.Stat(filepath.Join(sdkDir, "node_modules", pkg, "package.json")); err != nil {
			missingDep(t, "the npm package "+pkg+" (in "+sdkDir+")")
		}
	}
	return node
}

// needPythonRequests returns Debian's Python once it can import requests.
func needPythonRequests(t *testing.T) string {
	t.Helper()
	if err := exec.Command(debianPython, "-c", "import requests").Run(); err != nil {
		missingDep(t, debianPython+" with requests (Debian's python3-requests)")
	}
	return debianPython
}

// sdkVendor is a vendor stand-in over HTTPS on loopback: it answers the
// few calls the SDK tests make, optionally throttling the first one as
// OpenAI does, and counts what reached it.
type sdkVendor struct {
	throttleFirst bool
	mu            sync.Mutex
	arrivals      int
	throttled     int
}

func (v *sdkVendor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	v.mu.Lock()
	v.arrivals++
	throttle := v.throttleFirst && v.arrivals == 1
	if throttle {
		v.throttled++
	}
	v.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if throttle {
		// OpenAI's throttle, with a retry-after-ms shorter than the hold
		// the proxy keeps (its min_wait is 1 s).
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Retry-After-Ms", "300")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}`)
		return
	}
	switch {
	case r.URL.Path == "/user":
		io.WriteString(w, `{"login":"sdktest","id":1}`)
	case strings.HasPrefix(r.URL.Path, "/v1/customers/"):
		io.WriteString(w, `{"id":"cus_sdktest","object":"customer"}`)
	case r.URL.Path == "/v1/models":
		io.WriteString(w, `{"object":"list","data":[]}`)
	case r.URL.Path == "/v2/models":
		io.WriteString(w, `{"status":{"code":10000,"description":"Ok"},"models":[]}`)
	default:
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"error":"not found"}`)
	}
}

func (v *sdkVendor) counts() (arrivals, throttled int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.arrivals, v.throttled
}

// decisions counts the proxy's request log lines (one per attempt a
// client made) by decision.
func decisions(p *running) map[string]int {
	out := map[string]int{}
	for _, line := range strings.Split(p.logs.String(), "\n") {
		if !strings.Contains(line, `"msg":"request"`) {
			continue
		}
		_, rest, _ := strings.Cut(line, `"decision":"`)
		d, _, _ := strings.Cut(rest, `"`)
		out[d]++
	}
	return out
}

// TestRealSDKsBackOffAndSucceed runs the vendors' own SDKs from npm, and a
// Python client written from Clarifai's documentation, through the proxy
// (HTTPS, intercepted) against local stand-ins. Each request the proxy
// refuses, or whose vendor throttle it rewrites, is retried by the SDK
// after the wait the answer names and then succeeds: no request is lost,
// and the attempts the proxy and the stand-in saw show no retry storm.
func TestRealSDKsBackOffAndSucceed(t *testing.T) {
	const n = 3 // requests per client, sent at once; the limit lets 2 through per second
	tests := []struct {
		name          string
		profile       string
		limits        string
		throttleFirst bool
		run           func(t *testing.T, p *running) (stdout string, err error)
		// What the proxy saw: requests it let through, and its own 429s
		// (each followed by one retry of the client), as a range.
		wantPass             int
		minLocal, maxLocal   int
		wantVendorArrivals   int
		wantRateLimitHandler int // octokit: calls of onRateLimit; -1 unchecked
	}{
		{
			// plugin-throttling calls onRateLimit only on
			// x-ratelimit-remaining: 0, and waits until x-ratelimit-reset.
			name: "octokit", profile: "github", limits: "[2/1s]",
			run: nodeSDK("octokit", n), wantPass: n, minLocal: 1, maxLocal: 1, wantVendorArrivals: n, wantRateLimitHandler: 1,
		},
		{
			// The Stripe SDK retries a 429 only with Stripe-Should-Retry:
			// true, on its own schedule (0.5 s, then 0.5 to 1 s, 1 to 2 s,
			// 2 to 4 s; it reads no Retry-After, so the script allows it 4
			// retries): its early attempts may be refused again, at most
			// one per step of its schedule.
			name: "stripe", profile: "stripe", limits: "[2/1s]",
			run: nodeSDK("stripe", n), wantPass: n, minLocal: 1, maxLocal: 4, wantVendorArrivals: n, wantRateLimitHandler: -1,
		},
		{
			// retry-after-ms holds the exact wait: one retry, not early.
			name: "openai", profile: "openai", limits: "[2/1s]",
			run: nodeSDK("openai", n), wantPass: n, minLocal: 1, maxLocal: 1, wantVendorArrivals: n, wantRateLimitHandler: -1,
		},
		{
			// The vendor throttles with retry-after-ms: 300 while the
			// proxy holds the key 1 s: the rewritten answer says 1000, so
			// the SDK's one retry is not refused again.
			name: "openai, a vendor throttle rewritten", profile: "openai", throttleFirst: true,
			run: nodeSDK("openai", 1), wantPass: 2, minLocal: 0, maxLocal: 0, wantVendorArrivals: 2, wantRateLimitHandler: -1,
		},
		{
			// Written from Clarifai's documentation: it looks for
			// status.code CONN_THROTTLED in the body, sleeps a fixed time
			// (15 s there; here 2.1 s, past any Retry-After a 2/1s limit
			// gives) and retries.
			name: "clarifai python", profile: "clarifai", limits: "[2/1s]",
			run: clarifaiClient(n, 2100*time.Millisecond), wantPass: n, minLocal: 1, maxLocal: 1, wantVendorArrivals: n, wantRateLimitHandler: -1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.profile == "clarifai" {
				needPythonRequests(t)
			} else {
				needSDKs(t)
			}
			t.Parallel()
			v := &sdkVendor{throttleFirst: tt.throttleFirst}
			up := startOrigin(t, true, v)
			limits := ""
			if tt.limits != "" {
				limits = "\n    limits: " + tt.limits
			}
			p := startProxy(t, fmt.Sprintf(`upstreams:
  - profile: %s
    hosts: [api.test]
    connect_to: %s
    mode: reject%s
`, tt.profile, up.Listener.Addr(), limits))
			out, err := tt.run(t, p)
			if err != nil {
				t.Fatalf("the client failed: %v\n%s\nproxy log:\n%s", err, out, p.logs.String())
			}
			var res struct {
				OK                    int      `json:"ok"`
				Errors                []string `json:"errors"`
				RateLimitHandlerCalls int      `json:"rateLimitHandlerCalls"`
				Throttles             []struct {
					RetryAfter   string `json:"retryAfter"`
					RetryAfterMs string `json:"retryAfterMs"`
				} `json:"throttles"`
			}
			if err := json.Unmarshal([]byte(lastLine(out)), &res); err != nil {
				t.Fatalf("the client's result %q: %v", out, err)
			}
			wantOK := n
			if tt.throttleFirst {
				wantOK = 1
			}
			if res.OK != wantOK || len(res.Errors) > 0 {
				t.Errorf("%d of %d requests succeeded; errors %v", res.OK, wantOK, res.Errors)
			}
			// A retry that takes the slot its refusal booked may wait for it
			// a little: "queued".
			d := decisions(p)
			if d["pass"]+d["queued"] != tt.wantPass || d["rejected"] < tt.minLocal || d["rejected"] > tt.maxLocal || d["pass"]+d["queued"]+d["rejected"] != sum(d) {
				t.Errorf("the proxy saw %v; want %d let through and %d to %d local 429s (each one retry)", d, tt.wantPass, tt.minLocal, tt.maxLocal)
			}
			if arrivals, _ := v.counts(); arrivals != tt.wantVendorArrivals {
				t.Errorf("the vendor saw %d requests, want %d", arrivals, tt.wantVendorArrivals)
			}
			if tt.wantRateLimitHandler >= 0 && res.RateLimitHandlerCalls != tt.wantRateLimitHandler {
				t.Errorf("the SDK's rate-limit handler ran %d times, want %d", res.RateLimitHandlerCalls, tt.wantRateLimitHandler)
			}
			if tt.profile == "openai" {
				// The SDK prefers retry-after-ms: the exact wait, and on a
				// rewritten throttle the proxy's hold, not the vendor's 300.
				for _, th := range res.Throttles {
					ra, _ := strconv.Atoi(th.RetryAfter)
					ms, err := strconv.Atoi(th.RetryAfterMs)
					if err != nil || ms < 1 || ms > ra*1000 || tt.throttleFirst && ms != 1000 {
						t.Errorf("a 429 the SDK got had retry-after-ms %q beside Retry-After %q", th.RetryAfterMs, th.RetryAfter)
					}
				}
				if len(res.Throttles) == 0 {
					t.Error("the SDK got no 429")
				}
			}
			t.Logf("client %s; proxy decisions %v", lastLine(out), d)
		})
	}
}

// nodeSDK runs testdata/sdk/run.mjs for one SDK through the proxy,
// trusting its CA and nothing inherited.
func nodeSDK(sdk string, requests int) func(t *testing.T, p *running) (string, error) {
	return func(t *testing.T, p *running) (string, error) {
		node := needSDKs(t)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, node, "run.mjs", sdk, fmt.Sprint(requests))
		cmd.Dir = sdkDir
		cmd.Env = append(cleanEnv(), "PROXY_URL="+p.url.String(), "BASE_HOST=api.test", "NODE_EXTRA_CA_CERTS="+p.caFile)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
}

// clarifaiClient runs testdata/sdk/clarifai_client.py with Debian's Python
// and requests through the proxy (HTTPS_PROXY, REQUESTS_CA_BUNDLE).
func clarifaiClient(requests int, backoff time.Duration) func(t *testing.T, p *running) (string, error) {
	return func(t *testing.T, p *running) (string, error) {
		python := needPythonRequests(t)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, python, "clarifai_client.py", "https://api.test/v2/models", fmt.Sprint(requests), fmt.Sprint(backoff.Seconds()))
		cmd.Dir = sdkDir
		cmd.Env = append(cleanEnv(), "HTTPS_PROXY="+p.url.String(), "REQUESTS_CA_BUNDLE="+p.caFile)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
