package admin_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/admin"
	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// stack is a real proxy, its recorder and admin endpoints, in front of a
// scripted upstream.
type stack struct {
	proxyURL *url.URL
	admin    string // base URL of the admin endpoints
	upstream *httptest.Server
	other    *httptest.Server // a host no upstream claims
	retried  atomic.Bool
}

// startStack runs the proxy with the upstreams of yamlText, in which
// UPSTREAM stands for the scripted upstream's address. The upstream
// answers /throttle with a bare 429, /retry with a 429 the first time, and
// anything else with 200.
func startStack(t *testing.T, yamlText string) *stack {
	t.Helper()
	st := &stack{}
	st.upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/throttle", r.URL.Path == "/retry" && !st.retried.Swap(true):
			w.WriteHeader(http.StatusTooManyRequests)
		default:
			io.WriteString(w, "ok")
		}
	}))
	t.Cleanup(st.upstream.Close)
	st.other = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(st.other.Close)
	// The host no upstream claims is on loopback, which the egress guard
	// refuses unless egress.allow names it.
	text := fmt.Sprintf("data_dir: %s\negress: {allow: [{cidrs: [127.0.0.0/8]}]}\n%s", t.TempDir(), strings.ReplaceAll(yamlText, "UPSTREAM", st.upstream.Listener.Addr().String()))
	cfg, err := config.Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	store := quota.NewMemoryStore(nil)
	rec := admin.NewRecorder(0)
	srv, err := proxy.New(cfg, proxy.Options{Store: store, Observers: []decision.Observer{rec}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("shutdown: %v", err)
		}
	})
	h, err := admin.Handler(admin.Options{Recorder: rec, Store: store, CACert: srv.CA().CertPEM(), Conns: srv.OpenConns})
	if err != nil {
		t.Fatal(err)
	}
	adm := httptest.NewServer(h)
	t.Cleanup(adm.Close)
	st.proxyURL = &url.URL{Scheme: "http", Host: ln.Addr().String()}
	st.admin = adm.URL
	return st
}

// send sends method url through the proxy with the apikey key ("" for
// none) and returns the status.
func (st *stack) send(t *testing.T, method, rawURL, key string) int {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(st.proxyURL)}, Timeout: 30 * time.Second}
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest(method, rawURL, nil)
	if key != "" {
		req.Header.Set("apikey", key)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func fingerprint(cred string) string {
	sum := sha256.Sum256([]byte(cred))
	return hex.EncodeToString(sum[:])[:12]
}

const scriptedUpstreams = `upstreams:
  - name: api
    hosts: [api.test]
    connect_to: UPSTREAM
    identity: [{header: apikey}]
    limits: [3/1h]
    mode: reject
    throttle: {min_wait: 10ms, default_wait: 10ms}
  - name: queue
    hosts: [queue.test]
    connect_to: UPSTREAM
    identity: [{header: apikey}]
    limits: [100/1h]
    learn: {mode: off}
    throttle: {min_wait: 10ms, default_wait: 10ms}
`

// TestScrapeAfterScriptedTraffic: real requests through the real proxy,
// then one scrape, read with the Prometheus text parser, holds exactly
// what they must produce.
func TestScrapeAfterScriptedTraffic(t *testing.T) {
	st := startStack(t, scriptedUpstreams)
	for i, want := range []int{200, 200, 200, 429, 429} { // 3 forwarded, 2 rejected locally
		if got := st.send(t, "GET", "http://api.test/ok", "k1"); got != want {
			t.Fatalf("request %d of k1: %d, want %d", i+1, got, want)
		}
	}
	if got := st.send(t, "POST", "http://api.test/throttle", "k2"); got != 429 {
		t.Fatalf("throttled POST: %d", got)
	}
	if got := st.send(t, "GET", "http://queue.test/retry", "k3"); got != 200 {
		t.Fatalf("retried GET: %d", got)
	}
	if got := st.send(t, "GET", st.other.URL+"/ok", ""); got != 200 { // no policy for 127.0.0.1
		t.Fatalf("GET of a host without a policy: %d", got)
	}

	fams := scrape(t, st.admin)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ratelimit_proxy_requests_total", []string{"decision=forwarded", "upstream=api"}, 3},
		{"ratelimit_proxy_requests_total", []string{"decision=rejected_locally", "upstream=api"}, 2},
		{"ratelimit_proxy_requests_total", []string{"decision=throttled_upstream", "upstream=api"}, 1},
		{"ratelimit_proxy_requests_total", []string{"decision=queued", "upstream=queue"}, 1}, // waited out the hold, then retried
		{"ratelimit_proxy_requests_total", []string{"decision=forwarded", "upstream="}, 1},
		{"ratelimit_proxy_retries_total", []string{"upstream=queue"}, 1},
		{"ratelimit_proxy_upstream_throttles_total", []string{"rule=status:429", "upstream=api"}, 1},
		{"ratelimit_proxy_upstream_throttles_total", []string{"rule=status:429", "upstream=queue"}, 1},
		{"ratelimit_proxy_queue_wait_seconds", []string{"upstream=api"}, 4},
		{"ratelimit_proxy_queue_wait_seconds", []string{"upstream=queue"}, 1},
		{"ratelimit_proxy_keys", []string{"upstream=api"}, 2},
		{"ratelimit_proxy_queue_depth", []string{"upstream=api"}, 0},
		{"ratelimit_proxy_booked_retries", []string{"upstream=api"}, 2}, // the slots the store booked for the two refusals' retries
		{"ratelimit_proxy_open_tunnels", nil, 0},
	} {
		got, ok := sample(fams, tc.name, tc.labels...)
		if !ok || got != tc.want {
			t.Errorf("%s{%s} = %v (found %v), want %v", tc.name, strings.Join(tc.labels, ","), got, ok, tc.want)
		}
	}
	if f := fams["ratelimit_proxy_requests_total"]; f == nil || len(f.GetMetric()) != 5 {
		t.Errorf("requests_total has %d series, want the 5 above", len(f.GetMetric()))
	}
	for _, name := range []string{"ratelimit_proxy_open_connections", "ratelimit_proxy_reloads_total", "go_goroutines", "process_cpu_seconds_total"} {
		if fams[name] == nil {
			t.Errorf("the scrape lacks %s", name)
		}
	}
}

// TestQuotasAfterScriptedTraffic: the quota API shows each key's use after
// real requests.
func TestQuotasAfterScriptedTraffic(t *testing.T) {
	st := startStack(t, scriptedUpstreams)
	for range 2 {
		st.send(t, "GET", "http://api.test/ok", "k1")
	}
	st.send(t, "GET", "http://api.test/ok", "k2")
	st.send(t, "GET", "http://api.test/ok", "")
	page := getQuotas(t, st.admin+"/v1/quotas")
	got := map[string]string{}
	for _, k := range page.Keys {
		if len(k.Limits) != 1 {
			t.Fatalf("key %s has limits %+v, want the configured one", k.Key, k.Limits)
		}
		l := k.Limits[0]
		got[k.Key] = fmt.Sprintf("%s %s used %d left %d", k.Identity, l.Limit, l.Used, l.Remaining)
	}
	want := map[string]string{
		fingerprint("k1"): "header:apikey 3/1h used 2 left 1",
		fingerprint("k2"): "header:apikey 3/1h used 1 left 2",
		"anonymous":       "anonymous 3/1h used 1 left 2",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("/v1/quotas keys:\n got %v\nwant %v", got, want)
	}
}

// TestNoCredentialInAdminOutput sends known secrets every way a credential
// travels, then reads every admin endpoint: none holds a secret, nor the
// full SHA-256 of one; the metrics hold no fingerprint either.
func TestNoCredentialInAdminOutput(t *testing.T) {
	st := startStack(t, `upstreams:
  - name: api
    hosts: [api.test]
    connect_to: UPSTREAM
    identity: [{header: apikey}, {authorization: Bearer}, {query: access_token}]
    limits: [1/1h]
    mode: reject
`)
	secrets := []string{"sk_live_ADMINSECRET1", "ADMINBEARER2", "ADMINQUERY3"}
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(st.proxyURL)}}
	defer c.CloseIdleConnections()
	for range 2 { // a pass, then a refusal, each way
		for _, req := range []*http.Request{
			mustRequest("http://api.test/p", "Apikey", secrets[0]),
			mustRequest("http://api.test/p", "Authorization", "Bearer "+secrets[1]),
			mustRequest("http://api.test/p?access_token="+secrets[2], "", ""),
		} {
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	var all strings.Builder
	for _, path := range []string{"/", "/healthz", "/readyz", "/metrics", "/v1/quotas", "/ca.pem"} {
		_, body, _ := fetch(t, st.admin+path)
		all.WriteString(body)
	}
	_, metrics, _ := fetch(t, st.admin+"/metrics")
	status := &strings.Builder{}
	page, err := admin.FetchQuotas(context.Background(), http.DefaultClient, st.admin)
	if err != nil {
		t.Fatal(err)
	}
	admin.WriteStatus(status, page)
	all.WriteString(status.String())
	for _, s := range secrets {
		sum := sha256.Sum256([]byte(s))
		full := hex.EncodeToString(sum[:])
		if strings.Contains(all.String(), s) || strings.Contains(all.String(), full[12:]) {
			t.Errorf("secret %q (or its SHA-256 past the fingerprint) appears in the admin output", s)
		}
		if !strings.Contains(page.Keys[0].Key+page.Keys[1].Key+page.Keys[2].Key, full[:12]) {
			t.Errorf("the quota API does not list %q by its fingerprint: the test did not exercise it", s)
		}
		if strings.Contains(metrics, full[:12]) {
			t.Errorf("the metrics hold the fingerprint of %q: keys must never be labels", s)
		}
	}
}

func mustRequest(rawURL, header, value string) *http.Request {
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		panic(err)
	}
	if header != "" {
		req.Header.Set(header, value)
	}
	return req
}
