package proxy_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// testPKI is a CA of the test's own with one server certificate for the
// recording upstreams (api.test, other.test, 127.0.0.1).
type testPKI struct {
	caPEM  []byte
	caFile string
	pool   *x509.CertPool
	server tls.Certificate
}

var (
	pkiOnce sync.Once
	pki     testPKI
	pkiErr  error
)

func getPKI(t testing.TB) testPKI {
	t.Helper()
	pkiOnce.Do(func() { pki, pkiErr = makePKI() })
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return pki
}

// The test PKI is valid from before a simulation's fake clock starts
// (2000-01-01) until long after the real one: the same certificates serve
// both kinds of test.
var (
	pkiNotBefore = time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC)
	pkiNotAfter  = time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
)

func makePKI() (testPKI, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return testPKI{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "upstream test CA"},
		NotBefore: pkiNotBefore, NotAfter: pkiNotAfter,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return testPKI{}, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "api.test"},
		NotBefore: pkiNotBefore, NotAfter: pkiNotAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"api.test", "other.test"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return testPKI{}, err
	}
	p := testPKI{caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), pool: x509.NewCertPool()}
	p.pool.AddCert(caCert)
	p.server = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	dir, err := os.MkdirTemp("", "rlp-pki")
	if err != nil {
		return testPKI{}, err
	}
	p.caFile = filepath.Join(dir, "upstream-ca.pem")
	return p, os.WriteFile(p.caFile, p.caPEM, 0o644)
}

// hit is one request as the recording upstream saw it.
type hit struct {
	at      time.Time // when the request reached the machine (kernel receive time)
	seen    time.Time // when the handler read its clock (later under load)
	stamped bool      // at is the kernel's time (else the handler's)
	key     string    // the value of the apikey header, or of X-Test-Key
	host    string    // the Host the upstream was sent
	path    string
	header  http.Header
}

// recorder is an upstream that records every arrival and every new
// connection.
type recorder struct {
	srv      *httptest.Server // nil in a simulation
	address  string
	mu       sync.Mutex
	hits     []hit
	newConns atomic.Int64
	delay    atomic.Int64 // nanoseconds to hold each response
}

func newRecorder(t *testing.T, useTLS bool) *recorder {
	t.Helper()
	rec := &recorder{}
	rec.srv = httptest.NewUnstartedServer(http.HandlerFunc(rec.serve))
	rec.srv.Config.ConnState = rec.countConns
	rec.srv.Listener = stampListener{rec.srv.Listener}
	rec.srv.Config.ConnContext = stampContext
	if useTLS {
		rec.srv.TLS = &tls.Config{Certificates: []tls.Certificate{getPKI(t).server}}
		rec.srv.StartTLS()
	} else {
		rec.srv.Start()
	}
	rec.address = rec.srv.Listener.Addr().String()
	t.Cleanup(rec.srv.Close)
	return rec
}

// serve records the request and answers "hello PATH".
func (rec *recorder) serve(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	at, stamped := kernelReceived(r.Context())
	if !stamped {
		at = now
	}
	io.Copy(io.Discard, r.Body)
	key := r.Header.Get("apikey")
	if key == "" {
		key = r.Header.Get("X-Test-Key")
	}
	rec.mu.Lock()
	rec.hits = append(rec.hits, hit{at: at, seen: now, stamped: stamped, key: key, host: r.Host, path: r.URL.Path, header: r.Header.Clone()})
	rec.mu.Unlock()
	if d := rec.delay.Load(); d > 0 {
		select {
		case <-time.After(time.Duration(d)):
		case <-r.Context().Done():
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "hello %s", r.URL.Path)
}

func (rec *recorder) countConns(_ net.Conn, s http.ConnState) {
	if s == http.StateNew {
		rec.newConns.Add(1)
	}
}

func (rec *recorder) addr() string { return rec.address }

func (rec *recorder) arrivals(key string) []time.Time {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var ts []time.Time
	for _, h := range rec.hits {
		if key == "*" || h.key == key {
			ts = append(ts, h.at)
		}
	}
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	return ts
}

func (rec *recorder) all() []hit {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return slices.Clone(rec.hits)
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Sync() error { return nil }

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// running is a proxy started for one test.
type running struct {
	srv     *proxy.Server
	url     *url.URL
	logs    *syncBuffer
	accepts *atomic.Int64 // client connections accepted by the proxy
	caPool  *x509.CertPool
	caFile  string
	store   quota.Store
	prefix  string // what startProxy put before the test's YAML
}

// reload reloads the proxy with yamlText, completed as startProxy
// completes it.
func (p *running) reload(yamlText string) error {
	return p.srv.Reload(func() (*config.Config, error) {
		return config.Parse("test.yaml", []byte(p.prefix+yamlText))
	})
}

// queued is how many requests of the key of credential cred of upstream
// name wait for their slot, as the store sees it.
func (p *running) queued(t testing.TB, name, cred string) int {
	t.Helper()
	sum := sha256.Sum256([]byte(cred))
	in, ok := p.store.(quota.Inspector)
	if !ok {
		t.Fatalf("the store %T cannot be inspected", p.store)
	}
	st, err := in.Inspect(context.Background(), name+"/cred/"+hex.EncodeToString(sum[:]), nil)
	if err != nil {
		t.Fatal(err)
	}
	return st.Queued
}

// waitFor polls cond every 10ms until it holds, and fails the test when it
// does not within 10s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startProxy loads yamlText (data_dir and upstream_roots are filled in),
// starts the proxy on a loopback port and stops it when the test ends.
func startProxy(t *testing.T, yamlText string) *running { return startProxyB(t, yamlText) }

// startProxyB is startProxy for tests and benchmarks, with observers told
// of every exchange.
func startProxyB(t testing.TB, yamlText string, observers ...decision.Observer) *running {
	return startProxyStore(t, yamlText, quota.NewMemoryStore(nil), observers...)
}

// startProxyStore is startProxy with the given quota store and observers.
func startProxyStore(t testing.TB, yamlText string, store quota.Store, observers ...decision.Observer) *running {
	t.Helper()
	return startProxyOpts(t, yamlText, proxy.Options{Store: store, Observers: observers})
}

// startProxyOpts is startProxy with options: the log is filled in, and
// the store when none is given; a Dial given is kept.
func startProxyOpts(t testing.TB, yamlText string, opts proxy.Options) *running {
	t.Helper()
	dir := t.TempDir()
	prefix := fmt.Sprintf("data_dir: %s\nupstream_roots: [%s]\n", dir, getPKI(t).caFile)
	cfg, err := config.Parse("test.yaml", []byte(prefix+yamlText))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	level := zapcore.DebugLevel // everything, so tests can grep it; a config may ask for less
	if strings.Contains(yamlText, "log: {level: warn}") {
		level = zapcore.WarnLevel
	}
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), logs, level))
	opts.Log = log
	if opts.Store == nil {
		opts.Store = quota.NewMemoryStore(nil)
	}
	srv, err := proxy.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepts := &atomic.Int64{}
	go srv.Serve(&countingListener{Listener: ln, n: accepts})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("shutdown: %v", err)
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(srv.CA().CertPEM())
	caFile := filepath.Join(dir, "ca.pem")
	return &running{srv: srv, url: &url.URL{Scheme: "http", Host: ln.Addr().String()}, logs: logs, accepts: accepts, caPool: pool, caFile: caFile, store: opts.Store, prefix: prefix}
}

// client returns a Go client that uses the proxy explicitly (Go never
// proxies loopback from the environment) and trusts the proxy's CA.
func (p *running) client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyURL(p.url),
		TLSClientConfig:     &tls.Config{RootCAs: p.caPool},
		MaxIdleConnsPerHost: 200,
		ForceAttemptHTTP2:   false,
	}}
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// allowLoopback lets hosts no upstream claims reach loopback addresses:
// the egress guard refuses them by default, and the tests' unknown hosts
// listen there.
const allowLoopback = "egress: {allow: [{cidrs: [127.0.0.0/8]}]}\n"

// upstreamYAML is one upstream named api claiming api.test, routed to rec.
func upstreamYAML(rec *recorder, extra string) string {
	return fmt.Sprintf(`upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity:
      - header: apikey
%s`, rec.addr(), indent(extra, "    "))
}

func indent(s, prefix string) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n") + "\n"
}

// answer is what a client got back.
type answer struct {
	code   int
	body   string
	header http.Header
}

// fetch sends one GET with an apikey and returns the answer. It never
// touches the test, so goroutines call it and hand the error back.
func fetch(c *http.Client, rawURL, key string) (answer, error) {
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		return answer{}, err
	}
	if key != "" {
		req.Header.Set("apikey", key)
	}
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, fmt.Errorf("GET %s: %w", rawURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, fmt.Errorf("GET %s: reading the body: %w", rawURL, err)
	}
	return answer{resp.StatusCode, string(body), resp.Header}, nil
}

// get is fetch for the test's own goroutine: it fails the test on error.
func get(t *testing.T, c *http.Client, rawURL, key string) (int, string, http.Header) {
	t.Helper()
	a, err := fetch(c, rawURL, key)
	if err != nil {
		t.Fatal(err)
	}
	return a.code, a.body, a.header
}

// wantStatus fetches rawURL and returns an error unless the answer has
// status want.
func wantStatus(c *http.Client, rawURL, key string, want int) error {
	a, err := fetch(c, rawURL, key)
	if err != nil {
		return err
	}
	if a.code != want {
		return fmt.Errorf("GET %s: status %d (%s), want %d", rawURL, a.code, strings.TrimSpace(a.body), want)
	}
	return nil
}

// maxInWindow is the largest number of times in any half-open interval
// of length w.
func maxInWindow(ts []time.Time, w time.Duration) int {
	best, lo := 0, 0
	for hi := range ts {
		for ts[hi].Sub(ts[lo]) >= w {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// schemes are the two ways a client reaches an upstream through the proxy.
var schemes = []struct {
	name   string
	tls    bool
	prefix string
}{
	{"http", false, "http://api.test"},
	{"https-intercepted", true, "https://api.test"},
}
