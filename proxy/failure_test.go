package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
)

// errorCode reads the code of a proxy's JSON error body.
func errorCode(body string) string {
	var e struct {
		Error struct{ Code, Source string }
	}
	if json.Unmarshal([]byte(body), &e) != nil || e.Error.Source != "proxy" {
		return ""
	}
	return e.Error.Code
}

// TestErrorBodiesNameTheFailureClassNotTheRawError is the oracle probe of
// issue 12: a client that makes the proxy dial addresses of its choice
// must not learn from the answer which ports are open, which names
// resolve, or where the resolver is. The answer names the class; the raw
// error is in the log line only.
func TestErrorBodiesNameTheFailureClassNotTheRawError(t *testing.T) {
	dead := freePort(t) // nothing listens there: connection refused
	_, deadPort, _ := net.SplitHostPort(dead)
	untrusted := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer untrusted.Close()
	slow := newRecorder(t, false)
	slow.delay.Store(int64(2 * time.Second))

	// lookupFails dials like a resolver that knows no such host would.
	lookupFails := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, _ := net.SplitHostPort(addr)
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no such host", Name: host, Server: "10.9.8.7:53", IsNotFound: true}}
	}
	upstreams := func(connectTo string) string {
		return fmt.Sprintf("timeouts: {response_header: 300ms}\nupstreams:\n  - name: api\n    hosts: [api.test]\n    connect_to: %s\n    identity: [{header: apikey}]\n", connectTo)
	}
	tests := []struct {
		name     string
		yaml     string
		dial     func(context.Context, string, string) (net.Conn, error)
		url      string // through the proxy; "CONNECT host:port" for a tunnel
		status   int
		code     string
		rawWords []string // in the log, never in the answer
	}{
		{"refused, plain", upstreams(dead), nil, "http://api.test/x", 502, "UPSTREAM_UNREACHABLE",
			[]string{"connection refused", deadPort}},
		{"refused, intercepted", upstreams(dead), nil, "https://api.test/x", 502, "UPSTREAM_UNREACHABLE",
			[]string{"connection refused", deadPort}},
		{"refused, tunnel", allowLoopback + upstreams("api.internal:443"), nil, "CONNECT " + dead, 502, "UPSTREAM_UNREACHABLE",
			[]string{"connection refused", deadPort}},
		{"unknown name, plain", upstreams("api.internal:443"), lookupFails, "http://api.test/x", 502, "UPSTREAM_UNREACHABLE",
			[]string{"lookup", "10.9.8.7"}},
		{"unknown name, tunnel", upstreams("api.internal:443"), lookupFails, "CONNECT db.internal:5432", 502, "UPSTREAM_UNREACHABLE",
			[]string{"lookup", "10.9.8.7", "db.internal"}},
		{"untrusted certificate", upstreams(untrusted.Listener.Addr().String()), nil, "https://api.test/x", 502, "UPSTREAM_TLS",
			[]string{"x509"}},
		{"timeout", upstreams(slow.addr()), nil, "http://api.test/x", 504, "UPSTREAM_TIMEOUT",
			[]string{"timeout awaiting response headers"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startProxyOpts(t, tt.yaml, proxy.Options{Dial: tt.dial})
			var status int
			var body string
			if target, ok := strings.CutPrefix(tt.url, "CONNECT "); ok {
				status, body = rawConnect(t, p, target)
			} else {
				status, body, _ = get(t, p.client(), tt.url, "k")
			}
			if status != tt.status || errorCode(body) != tt.code {
				t.Fatalf("%s: %d %s, want %d %s", tt.url, status, body, tt.status, tt.code)
			}
			logs := p.logs.String()
			for _, w := range tt.rawWords {
				if strings.Contains(body, w) {
					t.Errorf("the answer carries %q of the raw error: %s", w, body)
				}
				if !strings.Contains(logs, w) {
					t.Errorf("the log lacks %q of the raw error:\n%s", w, logs)
				}
			}
			for _, w := range []string{"dial", "tcp", "127.0.0.1"} {
				if strings.Contains(body, w) {
					t.Errorf("the answer carries %q: %s", w, body)
				}
			}
		})
	}
}

// rawConnect sends one CONNECT over a fresh connection and returns the
// answer's status and body. Every read is bounded.
func rawConnect(t *testing.T, p *running, target string) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", p.url.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(body)
}
