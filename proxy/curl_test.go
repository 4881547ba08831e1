package proxy_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// cleanEnv is the environment without proxy and CA variables, so that a
// real client uses exactly what a test gives it.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
			"CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS":
			continue
		}
		env = append(env, kv)
	}
	return env
}

func needCurl(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is missing: the test command must install it")
		}
		t.Skip("curl is not installed")
	}
	return path
}

// TestCurlThroughTheProxy runs the README's two curl commands: plain HTTP
// with -x, HTTPS with --proxy and the proxy's CA.
func TestCurlThroughTheProxy(t *testing.T) {
	curl := needCurl(t)
	plain := newRecorder(t, false)
	secure := newRecorder(t, true)
	p := startProxy(t, `upstreams:
  - name: plain
    hosts: [plain.test]
    connect_to: `+plain.addr()+`
    identity: [{header: apikey}]
    limits: [2/1h]
    mode: reject
  - name: secure
    hosts: [api.test]
    connect_to: `+secure.addr()+`
    identity: [{authorization: Bearer}]
    limits: [100/1s]
`)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(curl, append([]string{"-sS", "--max-time", "10"}, args...)...)
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for i, want := range []string{"200", "200", "429"} {
		out, err := run("-o", "/dev/null", "-w", "%{http_code}", "-x", p.url.String(), "-H", "apikey: k", "http://plain.test/p")
		if err != nil || out != want {
			t.Fatalf("curl -x request %d: %q %v, want %s", i, out, err, want)
		}
	}
	out, err := run("--proxy", p.url.String(), "--cacert", p.caFile, "-H", "Authorization: Bearer t", "https://api.test/s", "https://api.test/s2")
	if err != nil || out != "hello /shello /s2" {
		t.Fatalf("curl --proxy --cacert: %q %v", out, err)
	}
	if n := p.accepts.Load(); n != 4 {
		t.Errorf("proxy accepted %d connections, want 4 (curl reuses its tunnel for the two HTTPS URLs)", n)
	}
	if _, err := run("--proxy", p.url.String(), "https://api.test/s"); err == nil {
		t.Error("curl trusted the intercepted connection without the proxy's CA")
	}
}
