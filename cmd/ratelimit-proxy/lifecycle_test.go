package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// upstream is a plain HTTP upstream that answers "ok PATH"; /slow
// answers after 300ms.
type upstream struct {
	srv  *httptest.Server
	hits atomic.Int64
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		if r.URL.Path == "/slow" {
			time.Sleep(300 * time.Millisecond)
		}
		fmt.Fprintf(w, "ok %s", r.URL.Path)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// through sends GET url with an apikey through the proxy at addr.
func through(addr, rawURL, key string) (code int, retryAfter, body string, err error) {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr})}}
	req, _ := http.NewRequest(http.MethodGet, rawURL, nil)
	req.Header.Set("apikey", key)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After"), readAll(resp.Body), nil
}

func expectCodes(t *testing.T, addr, key string, when string, codes ...int) {
	t.Helper()
	for i, want := range codes {
		code, _, body, err := through(addr, "http://api.test/", key)
		if err != nil || code != want {
			t.Fatalf("%s, request %d: %d %q %v, want %d", when, i, code, body, err, want)
		}
	}
}

// TestReloadOnSIGHUPAndOnFileChange runs the command and changes its
// configuration file as an editor does: each change is applied or refused
// with one log line, the process never stops, and a key keeps its history
// across reloads.
func TestReloadOnSIGHUPAndOnFileChange(t *testing.T) {
	up := newUpstream(t)
	configText := func(listen, limit, level string) string {
		return fmt.Sprintf(`listen: %s
log: {level: %s}
upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [%s]
    mode: reject
`, listen, level, up.srv.Listener.Addr(), limit)
	}
	cfg := writeConfig(t, configText("127.0.0.1:0", "1/1h", "info"))
	p := startMain(t, nil, "run", "-config", cfg, "-admin", "127.0.0.1:0")
	addr := p.addr(t, "proxy listening")
	expectCodes(t, addr, "k", "at start, 1/1h", 200)

	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, 1, `"msg":"config reloaded"`)

	replaceFile(t, cfg, configText("127.0.0.1:0", "2/1h", "info"))
	p.waitLog(t, 2, `"msg":"config reloaded"`)
	expectCodes(t, addr, "k", "after the file changed to 2/1h", 200)

	replaceFile(t, cfg, configText("127.0.0.1:0", "2/lol", "info"))
	p.waitLog(t, 1, `"msg":"reload refused"`, `config.yaml:8: upstreams[0].limits[0]`)
	expectCodes(t, addr, "k2", "after a bad file, 2/1h still", 200, 200, 429)

	replaceFile(t, cfg, configText("127.0.0.1:1", "2/1h", "info"))
	p.waitLog(t, 1, `"msg":"reload refused"`, `listen changed: restart the proxy to apply it`)

	// k sent two: under 3/1h one more, then 429 (a reset history would
	// let three through).
	replaceFile(t, cfg, configText("127.0.0.1:0", "3/1h", "warn"))
	p.waitLog(t, 3, `"msg":"config reloaded"`)
	expectCodes(t, addr, "k", "after the file changed to 3/1h", 200, 429)

	// The metrics count the reloads applied, not the refused ones.
	resp, err := http.Get("http://" + p.addr(t, "admin listening") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if metrics := readAll(resp.Body); !strings.Contains(metrics, "\nratelimit_proxy_reloads_total 3\n") {
		t.Errorf("/metrics after 3 reloads applied and 2 refused:\n%s", metrics)
	}
	resp.Body.Close()

	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, p.logs.String())
	}
	logs := p.logs.String()
	if n := strings.Count(logs, `"msg":"reload refused"`); n != 2 {
		t.Errorf("%d reload refused lines, want 2:\n%s", n, logs)
	}
	last := logs[strings.LastIndex(logs, `"msg":"config reloaded"`):]
	if strings.Contains(last, `"msg":"request"`) || !strings.Contains(logs, `"msg":"request"`) {
		t.Errorf("log.level warn did not apply: request lines after the last reload:\n%s", last)
	}
}

// TestSIGTERMAnswersQueuedRequestsAndExitsZero: on SIGTERM the request in
// flight finishes, the queued ones are answered 503 with Retry-After at
// the shutdown deadline, and the process exits 0.
func TestSIGTERMAnswersQueuedRequestsAndExitsZero(t *testing.T) {
	up := newUpstream(t)
	cfg := writeConfig(t, fmt.Sprintf(`log: {level: debug}
timeouts: {shutdown: 2s}
upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [1/20m]
    max_wait: 1h
`, up.srv.Listener.Addr()))
	p := startMain(t, nil, "run", "-config", cfg, "-listen", "127.0.0.1:0")
	addr := p.addr(t, "proxy listening")
	expectCodes(t, addr, "k", "first request", 200)

	type answer struct {
		path, retryAfter, body string
		code                   int
		err                    error
	}
	answers := make(chan answer, 3)
	send := func(path, key string) {
		code, ra, body, err := through(addr, "http://api.test"+path, key)
		answers <- answer{path, ra, body, code, err}
	}
	go send("/slow", "other")
	go send("/b", "k")
	go send("/c", "k")
	for _, path := range []string{"/slow", "/b", "/c"} {
		p.waitLog(t, 1, `"msg":"request received"`, `"path":"`+path+`"`)
	}
	for deadline := time.Now().Add(20 * time.Second); up.hits.Load() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the slow request did not reach the upstream within 20s")
		}
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0:\n%s", code, p.logs.String())
	}
	for range 3 {
		a := <-answers
		if a.err != nil {
			t.Errorf("%s: %v, want an answer, never a closed connection", a.path, a.err)
			continue
		}
		if a.path == "/slow" {
			if a.code != 200 {
				t.Errorf("in flight: %d, want 200", a.code)
			}
			continue
		}
		if secs, _ := strconv.Atoi(a.retryAfter); a.code != 503 || secs < 1100 || !strings.Contains(a.body, "PROXY_SHUTTING_DOWN") {
			t.Errorf("%s, queued at SIGTERM: %d %q, Retry-After %q; want 503 with the time to its slot", a.path, a.code, a.body, a.retryAfter)
		}
	}
	logs := p.logs.String()
	if n := strings.Count(logs, `"decision":"shutdown"`); n != 2 || strings.Contains(logs, "client_gone") {
		t.Errorf("%d requests logged as shutdown, want 2, and no client_gone:\n%s", n, logs)
	}
}

// TestEnvRoutesCurlThroughTheProxy evaluates what env prints in a shell
// and runs curl with it: an intercepted host and a tunnelled host whose
// certificate chains to a system root are both trusted.
func TestEnvRoutesCurlThroughTheProxy(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is missing: the test command must install it")
		}
		t.Skip("curl is not installed")
	}
	pki := newPKI(t)
	tlsServer := func(ln net.Listener, body string) *httptest.Server {
		s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
		if ln != nil {
			s.Listener.Close()
			s.Listener = ln
		}
		s.TLS = &tls.Config{Certificates: []tls.Certificate{pki.server}}
		s.StartTLS()
		t.Cleanup(s.Close)
		return s
	}
	intercepted := tlsServer(nil, "intercepted ok")
	ln, err := net.Listen("tcp", "127.0.0.2:0") // not in NO_PROXY: curl sends it through the proxy
	if err != nil {
		t.Skipf("no 127.0.0.2 here: %v", err)
	}
	tunnelled := tlsServer(ln, "tunnelled ok")

	// The tunnelled host is on loopback, which the egress guard refuses
	// unless egress.allow names it.
	cfg := writeConfig(t, fmt.Sprintf(`egress: {allow: [{cidrs: [127.0.0.0/8]}]}
upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
`, intercepted.Listener.Addr()))
	// Go, and so the proxy, reads SSL_CERT_FILE for the system roots.
	systemRoots := []string{"SSL_CERT_FILE=" + pki.caFile}
	p := startMain(t, systemRoots, "run", "-config", cfg, "-listen", "127.0.0.1:0")
	addr := p.addr(t, "proxy listening")
	bundle := filepath.Join(filepath.Dir(cfg), "data", "ca-bundle.pem")
	if _, err := os.Stat(bundle); err != nil {
		t.Fatalf("run did not write the trust bundle: %v", err)
	}

	code, envOut, stderr := runMain(t, systemRoots, "env", "-config", cfg, "-proxy", "http://"+addr)
	if code != 0 {
		t.Fatalf("env: exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"export http_proxy=http://" + addr + "\n", "export HTTP_PROXY=http://" + addr + "\n",
		"export https_proxy=http://" + addr + "\n", "export HTTPS_PROXY=http://" + addr + "\n",
		"export NO_PROXY=localhost,127.0.0.1,::1\n", "export REQUESTS_CA_BUNDLE=" + bundle + "\n",
		"export SSL_CERT_FILE=" + bundle + "\n", "export CURL_CA_BUNDLE=" + bundle + "\n",
		"export NODE_EXTRA_CA_CERTS=" + bundle + "\n", "export NODE_USE_ENV_PROXY=1\n",
		"# Java: keytool -importcert -noprompt -trustcacerts -alias ratelimit-proxy -file " + filepath.Join(filepath.Dir(cfg), "data", "ca.pem"),
	} {
		if !strings.Contains(envOut, want) {
			t.Errorf("env output lacks %q:\n%s", want, envOut)
		}
	}
	for _, target := range []struct{ url, want string }{
		{"https://api.test/", "intercepted ok"},
		{"https://" + tunnelled.Listener.Addr().String() + "/", "tunnelled ok"},
	} {
		sh := exec.Command("sh", "-c", envOut+"\nexec \"$0\" -sS --max-time 10 \"$1\"", curl, target.url)
		sh.Env = cleanEnv()
		out, err := sh.CombinedOutput()
		if err != nil || string(out) != target.want {
			t.Errorf("curl %s with the env output: %q %v, want %q", target.url, out, err, target.want)
		}
	}
	p.waitLog(t, 1, `"msg":"connect"`, `"decision":"tunnel"`, tunnelled.Listener.Addr().String())
	p.waitLog(t, 1, `"msg":"request"`, `"host":"api.test:443"`, `"status":200`)

	// Without -proxy, the address is listen's, loopback for a wildcard.
	cfg2 := writeConfig(t, "listen: 0.0.0.0:8123\nclients: [10.0.0.0/8]\nupstreams: []\n")
	if _, out, _ := runMain(t, systemRoots, "env", "-config", cfg2); !strings.Contains(out, "export https_proxy=http://127.0.0.1:8123\n") {
		t.Errorf("env of listen 0.0.0.0:8123:\n%s", out)
	}
}
