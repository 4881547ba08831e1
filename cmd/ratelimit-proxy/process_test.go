package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is the command run as a process by the test binary (see TestMain).
type proc struct {
	cmd    *exec.Cmd
	logs   *lockedBuffer // standard error
	stdout *lockedBuffer
	exited chan struct{} // closed when the process ended and its output is read
	err    error         // its exit, once exited is closed
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startMain runs the command with args and the test's environment plus
// env; the process is killed when the test ends.
func startMain(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(os.Args[0], args...), logs: &lockedBuffer{}, stdout: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd.Env = append(append(cleanEnv(), "RATELIMIT_PROXY_AS_MAIN=1"), env...)
	p.cmd.Stderr, p.cmd.Stdout = p.logs, p.stdout
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// runMain runs the command to its end (at most 30s) and returns its exit
// status and output.
func runMain(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	p := startMain(t, env, args...)
	return p.wait(t), p.stdout.String(), p.logs.String()
}

// wait waits at most 30s for the process to end and returns its exit
// status.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("%v did not end within 30s; its log:\n%s", p.cmd.Args[1:], p.logs.String())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// waitLog waits at most 20s for the log to hold n lines containing each
// of substrs.
func (p *proc) waitLog(t *testing.T, n int, substrs ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if p.countLog(substrs...) >= n {
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("the process ended (%v) before logging %d lines with %q:\n%s", p.err, n, substrs, p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited 20s for %d log lines with %q:\n%s", n, substrs, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) countLog(substrs ...string) int {
	n := 0
lines:
	for _, line := range strings.Split(p.logs.String(), "\n") {
		for _, s := range substrs {
			if !strings.Contains(line, s) {
				continue lines
			}
		}
		n++
	}
	return n
}

// addr returns the address the log line with message msg announces.
func (p *proc) addr(t *testing.T, msg string) string {
	t.Helper()
	p.waitLog(t, 1, `"msg":"`+msg+`"`)
	for _, line := range strings.Split(p.logs.String(), "\n") {
		var l struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == msg {
			return l.Addr
		}
	}
	t.Fatalf("no %q line", msg)
	return ""
}

func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// cleanEnv is the environment without proxy and CA variables, so that the
// command and real clients use exactly what a test gives them.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
			"CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "RATELIMIT_PROXY_AS_MAIN":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// writeConfig writes a configuration file in a new directory, with its
// data directory beside it, and returns its path.
func writeConfig(t *testing.T, yamlText string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(yamlText), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// replaceFile replaces path with content as editors do: a temporary file
// renamed over it.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".swp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// testPKI is a CA standing in for the system roots, and a server
// certificate it signed for api.test, 127.0.0.1 and 127.0.0.2.
type testPKI struct {
	caFile string
	server tls.Certificate
}

func newPKI(t *testing.T) testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test system root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "api.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"api.test"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("127.0.0.2")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	p := testPKI{caFile: filepath.Join(t.TempDir(), "system-roots.pem"), server: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
	if err := os.WriteFile(p.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// readAll reads r to its end, for a body.
func readAll(r io.Reader) string {
	b, _ := io.ReadAll(r)
	return string(b)
}
