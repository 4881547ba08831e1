package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary act as the command, so the quick-start test
// runs the real main in its own process.
func TestMain(m *testing.M) {
	if os.Getenv("RATELIMIT_PROXY_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestQuickStart runs the command as the README's quick start does, with
// config.example.yaml, sends a request through it, fetches the CA from the
// admin address, and stops it with SIGTERM.
func TestQuickStart(t *testing.T) {
	dir := t.TempDir()
	example, err := os.ReadFile(filepath.Join("..", "..", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	// The test's upstream, a host no upstream claims, listens on loopback,
	// which the egress guard refuses unless egress.allow names it (as a
	// user's local stand-in would).
	example = append(example, "\negress: {allow: [{cidrs: [127.0.0.0/8]}]}\n"...)
	os.WriteFile(cfgPath, example, 0o644)

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "upstream ok") }))
	defer upstream.Close()

	cmd := exec.Command(os.Args[0], "-config", cfgPath, "-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "RATELIMIT_PROXY_AS_MAIN=1")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	var proxyAddr, adminAddr string
	var logs bytes.Buffer
	sc := bufio.NewScanner(stderr)
	deadline := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
	for (proxyAddr == "" || adminAddr == "") && sc.Scan() {
		logs.WriteString(sc.Text() + "\n")
		var line struct{ Msg, Addr string }
		json.Unmarshal(sc.Bytes(), &line)
		switch line.Msg {
		case "proxy listening":
			proxyAddr = line.Addr
		case "admin listening":
			adminAddr = line.Addr
		}
	}
	deadline.Stop()
	if proxyAddr == "" || adminAddr == "" {
		t.Fatalf("the command did not report its addresses:\n%s", logs.String())
	}
	copied := make(chan struct{})
	go func() { io.Copy(&logs, stderr); close(copied) }()

	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: proxyAddr})}}
	resp, err := c.Get(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "upstream ok" {
		t.Fatalf("through the proxy: %d %q", resp.StatusCode, body)
	}
	resp, err = http.Get("http://" + adminAddr + "/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	onDisk, _ := os.ReadFile(filepath.Join(dir, "data", "ca.pem"))
	if !strings.HasPrefix(string(pemBytes), "-----BEGIN CERTIFICATE-----") || !bytes.Equal(pemBytes, onDisk) {
		t.Fatalf("/ca.pem does not serve data/ca.pem")
	}
	if info, err := os.Stat(filepath.Join(dir, "data", "ca-key.pem")); err != nil {
		t.Fatalf("CA key file: %v", err)
	} else if info.Mode().Perm() != 0o600 {
		t.Fatalf("CA key file mode %v, want 0600", info.Mode().Perm())
	}

	// The admin address serves the metrics and the quota state of what
	// went through.
	resp, err = http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `ratelimit_proxy_requests_total{decision="forwarded",upstream=""} 1`) {
		t.Errorf("/metrics does not count the request:\n%s", metrics)
	}
	var status bytes.Buffer
	if err := run([]string{"status", "-admin", adminAddr}, strings.NewReader(""), &status, io.Discard); err != nil || status.String() != "no key seen yet\n" {
		t.Errorf("status: %v %q", err, status.String())
	}

	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		<-copied // the log is complete, and no longer written
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not stop within 10s of SIGTERM")
	}
}

func TestCheckReportsTheFirstProblemWithFileAndLine(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("upstreams:\n  - name: a\n    hosts: [a.test]\n    limits: [300/lol]\n"), 0o644)
	var out bytes.Buffer
	err := run([]string{"check", "-config", bad}, strings.NewReader(""), &out, &out)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:4: upstreams[0].limits[0]") {
		t.Fatalf("check of a bad config: %v", err)
	}
	err = run([]string{"check", "-config", filepath.Join("..", "..", "config.example.yaml")}, strings.NewReader(""), &out, &out)
	if err != nil || !strings.Contains(out.String(), "ok (4 upstreams)") {
		t.Fatalf("check of the example: %v %q", err, out.String())
	}
}

func TestBadFlagAddressesNameTheFlag(t *testing.T) {
	example := filepath.Join("..", "..", "config.example.yaml")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-listen", "8080"}, `-listen: "8080": want host:port`},
		{[]string{"-listen", "localhost:http-alt"}, `-listen: "localhost:http-alt": port must be a number`},
		{[]string{"-admin", "nowhere"}, `-admin: "nowhere": want host:port`},
		{[]string{"-listen", "127.0.0.1:9999", "-admin", "127.0.0.1:9999"}, "both 127.0.0.1:9999: they must differ"},
	} {
		var out bytes.Buffer
		err := run(append([]string{"check", "-config", example}, tc.args...), strings.NewReader(""), &out, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("check %v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
	var out bytes.Buffer
	if err := run([]string{"check", "-config", example, "-listen", "127.0.0.1:0", "-admin", "off"}, strings.NewReader(""), &out, &out); err != nil {
		t.Errorf("good flags refused: %v", err)
	}
}

func TestFingerprintReadsTheCredentialFromStdin(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"fingerprint"}, strings.NewReader("console-token\n"), &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	// echo -n console-token | sha256sum | cut -c1-12
	if got := strings.TrimSpace(out.String()); got != "bc7c55a37ffb" {
		t.Fatalf("fingerprint printed %q", got)
	}
	if err := run([]string{"fingerprint"}, strings.NewReader(""), &out, io.Discard); err == nil {
		t.Fatal("fingerprint of nothing succeeded")
	}
	if err := run([]string{"frobnicate"}, nil, &out, io.Discard); err == nil || !strings.Contains(err.Error(), "frobnicate") {
		t.Fatalf("unknown command: %v", err)
	}
}
