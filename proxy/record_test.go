package proxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// records collects what an observer is told.
type records struct {
	mu   sync.Mutex
	recs []decision.Record
}

func (rs *records) Observe(r decision.Record) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.recs = append(rs.recs, r)
}

func (rs *records) all() []decision.Record {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]decision.Record(nil), rs.recs...)
}

// TestEveryExchangeIsRecordedOnce: each exchange gives observers exactly
// one record, the same one the log line is written from, with the key's
// fingerprint, store key and limits, the decision, the attempts and the
// upstream throttles.
func TestEveryExchangeIsRecordedOnce(t *testing.T) {
	var retried atomic.Bool
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/throttle", r.URL.Path == "/retry" && !retried.Swap(true):
			w.WriteHeader(http.StatusTooManyRequests) // the key is held for default_wait
		default:
			io.WriteString(w, "ok")
		}
	}))
	defer up.Close()
	secure := newRecorder(t, true)
	rec := &records{}
	p := startProxyB(t, fmt.Sprintf(`upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [2/1h]
    window_margin: 10ms
    max_wait: 5s
    learn: {mode: off}
    throttle: {min_wait: 10ms, default_wait: 10ms, retry: {max_attempts: 2}}
  - name: secure
    hosts: [other.test]
    connect_to: %s
    identity: [{header: apikey}]
`, up.Listener.Addr(), secure.addr()), rec)
	c := p.client()
	send := func(method, path, key string) int {
		req, _ := http.NewRequest(method, path, nil)
		req.Header.Set("apikey", key)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	send("GET", "http://api.test/ok?token=q", "k1")
	send("GET", "http://api.test/ok", "k1")
	send("GET", "http://api.test/ok", "k1") // over 2/1h
	send("POST", "http://api.test/throttle", "k2")
	send("GET", "http://api.test/retry", "k3")
	send("GET", "https://other.test/ok", "k4") // a CONNECT, then the request inside

	sum := sha256.Sum256([]byte("k1"))
	k1 := hex.EncodeToString(sum[:])
	type want struct {
		method, path, key, decision string
		status, attempts, throttles int
		rule, upstream              string
	}
	wants := []want{
		{"GET", "/ok", k1[:12], "pass", 200, 1, 0, "", "api"},
		{"GET", "/ok", k1[:12], "pass", 200, 1, 0, "", "api"},
		{"GET", "/ok", k1[:12], "rejected", 429, 1, 0, "", "api"},
		{"POST", "/throttle", fingerprint("k2"), "pass", 429, 1, 1, "status:429", "api"},
		{"GET", "/retry", fingerprint("k3"), "queued", 200, 2, 1, "status:429", "api"}, // waited out the hold
		{"CONNECT", "", "", "intercept", 0, 0, 0, "", "secure"},
		{"GET", "/ok", fingerprint("k4"), "pass", 200, 1, 0, "", "secure"},
	}
	got := rec.all()
	if len(got) != len(wants) {
		t.Fatalf("observers were told %d records, want %d: %+v", len(got), len(wants), got)
	}
	for i, w := range wants {
		r := got[i]
		if r.Method != w.method || r.Path != w.path || r.Key != w.key || r.Decision != w.decision || r.Status != w.status ||
			r.Attempts != w.attempts || r.Throttles != w.throttles || r.ThrottleRule != w.rule || r.Upstream != w.upstream {
			t.Errorf("record %d: %+v\nwant %+v", i, r, w)
		}
	}
	first := got[0]
	if first.StoreKey != "api/cred/"+k1 || first.Identity != "header:apikey" ||
		len(first.Limits) != 1 || first.Limits[0] != (quota.Limit{Count: 2, Window: time.Hour}) ||
		len(first.Enforced) != 1 || first.Enforced[0] != (quota.Limit{Count: 2, Window: time.Hour + 10*time.Millisecond}) {
		t.Errorf("the first record's key: %+v", first)
	}
	if first.Start.IsZero() || first.Duration <= 0 {
		t.Errorf("the first record has no times: start %v duration %v", first.Start, first.Duration)
	}

	// The log has one line per record, saying the same.
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(p.logs.String()), "\n") {
		var line struct{ Msg, Decision string }
		json.Unmarshal([]byte(l), &line)
		if line.Msg == "request" || line.Msg == "connect" {
			lines = append(lines, line.Decision)
		}
	}
	var decisions []string
	for _, r := range got {
		decisions = append(decisions, r.Decision)
	}
	if strings.Join(lines, " ") != strings.Join(decisions, " ") {
		t.Errorf("log lines say %v, records %v", lines, decisions)
	}
}

func fingerprint(cred string) string {
	sum := sha256.Sum256([]byte(cred))
	return hex.EncodeToString(sum[:])[:12]
}

// TestOpenConnsCountsConnectionsAndTunnels: a plain keep-alive connection,
// an intercepted one and an untouched tunnel are each counted while open.
func TestOpenConnsCountsConnectionsAndTunnels(t *testing.T) {
	rec := newRecorder(t, true)
	plain := newRecorder(t, false)
	p := startProxy(t, allowLoopback+upstreamYAML(rec, "limits: [100/1s]\n")+fmt.Sprintf(`  - name: plain
    hosts: [plain.test]
    connect_to: %s
`, plain.addr()))
	wait := func(wantDirect, wantIntercepted, wantTunnels int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			d, i, tu := p.srv.OpenConns()
			if d == wantDirect && i == wantIntercepted && tu == wantTunnels {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("OpenConns = %d, %d, %d; want %d, %d, %d", d, i, tu, wantDirect, wantIntercepted, wantTunnels)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait(0, 0, 0)
	c := p.client()
	get(t, c, "http://plain.test/a", "k")
	wait(1, 0, 0) // kept alive
	get(t, c, "https://api.test/a", "k")
	wait(1, 1, 0) // the CONNECT left the direct count when it was hijacked
	// A host without a policy over CONNECT: tunnelled untouched, and kept
	// open by the client's keep-alive.
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "x") }))
	defer other.Close()
	tc := &http.Transport{Proxy: http.ProxyURL(p.url), TLSClientConfig: other.Client().Transport.(*http.Transport).TLSClientConfig.Clone()}
	defer tc.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tc}).Get(other.URL)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	wait(1, 1, 1)
	c.CloseIdleConnections()
	tc.CloseIdleConnections()
	wait(0, 0, 0)
}
