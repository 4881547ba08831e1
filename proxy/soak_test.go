//go:build soak

package proxy_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// TestSoak runs the real proxy on loopback for SOAK (default 10m; make
// soak) under mixed traffic: plain and intercepted requests of a few steady
// keys and of keys made up on the spot, retried uploads, bodies that
// trickle past timeouts.client_body, clients that vanish while queued or
// half-way through an answer, an upstream that stalls after its headers or
// resets half-way through a body or throttles, tunnels and WebSockets left
// idle, and a flood of idle connections beyond resources.max_client_conns.
// It ends with every client gone and checks that the proxy is back where
// it started: goroutines, heap and file descriptors at their baseline, no
// body bytes, waiting requests, tunnels or connections held, and every
// steady key's full quota usable again once its windows have passed.
//
// It is not part of make test: run it with make soak (SOAK=2m for a check).
func TestSoak(t *testing.T) {
	soak := 10 * time.Minute
	if v := os.Getenv("SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SOAK=%q: %v", v, err)
		}
		soak = d
	}
	w := newSoakWorld(t)
	w.warmUp()
	base := w.measure()
	t.Logf("baseline: %s", base)

	ctx, cancel := context.WithTimeout(context.Background(), soak)
	defer cancel()
	var wg sync.WaitGroup
	for i := range soakWorkers {
		wg.Go(func() { w.worker(ctx, i) })
	}
	wg.Go(func() { w.idleFlood(ctx) })
	progress := time.NewTicker(time.Minute)
	defer progress.Stop()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	start := time.Now()
loop:
	for {
		select {
		case <-done:
			break loop
		case <-progress.C:
			t.Logf("%v: %s; %s", time.Since(start).Round(time.Second), w.counts(), w.measure())
		case <-time.After(soak + 2*time.Minute):
			t.Fatal("the workers did not stop within 2 minutes of the end")
		}
	}
	t.Logf("traffic over after %v: %s", time.Since(start).Round(time.Second), w.counts())

	end := w.settle(base)
	t.Logf("after settling: %s", end)
	w.checkBack(base, end)
	w.checkQuotas()
	t.Logf("peaks: %d client connections, %d waiting requests, %d body bytes held, %d tunnels; resource limit lines: %s",
		w.peakConns.Load(), w.peakQueued.Load(), w.peakBuffered.Load(), w.peakTunnels.Load(), w.limitLines())
}

const (
	soakWorkers   = 24
	soakSteady    = 8  // steady keys, k0..k7
	soakLimit     = 20 // per second, per steady key
	soakMaxConns  = 128
	soakFloodSize = 200 // idle connections kept open: beyond soakMaxConns
)

type soakWorld struct {
	t        *testing.T
	srv      *proxy.Server
	store    *quota.MemoryStore
	proxyURL *url.URL
	logs     *countingLog
	echoAddr string

	plain, intercepted *http.Client

	outcomes sync.Map // name -> *atomic.Int64

	peakConns, peakQueued, peakBuffered, peakTunnels atomic.Int64
}

// countingLog counts log lines by message and keeps the last few errors,
// so that ten minutes of lines cost no memory.
type countingLog struct {
	mu     sync.Mutex
	counts map[string]int
	limits map[string]int
}

func (l *countingLog) Write(p []byte) (int, error) {
	s := string(p)
	msg := textBetween(s, `"msg":"`, `"`)
	l.mu.Lock()
	l.counts[msg]++
	if msg == "resource limit reached" {
		l.limits[textBetween(s, `"resource":"`, `"`)]++
	}
	l.mu.Unlock()
	return len(p), nil
}

func (l *countingLog) Sync() error { return nil }

func textBetween(s, from, to string) string {
	_, rest, ok := strings.Cut(s, from)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, to)
	return v
}

func newSoakWorld(t *testing.T) *soakWorld {
	w := &soakWorld{t: t, logs: &countingLog{counts: map[string]int{}, limits: map[string]int{}}}
	up := httptest.NewServer(http.HandlerFunc(soakUpstream))
	t.Cleanup(up.Close)
	ups := httptest.NewUnstartedServer(http.HandlerFunc(soakUpstream))
	ups.TLS = &tls.Config{Certificates: []tls.Certificate{getPKI(t).server}}
	ups.StartTLS()
	t.Cleanup(ups.Close)
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	w.echoAddr = echo.Addr().String()
	_, echoPort, _ := net.SplitHostPort(w.echoAddr)
	yamlText := fmt.Sprintf(`data_dir: %s
upstream_roots: [%s]
log: {level: info}
egress:
  allow:
    - cidrs: [127.0.0.1/32]
      ports: [%s]
timeouts: {client_body: 2s, upstream_body_idle: 1s, tunnel_idle: 2s, client_header: 2s, client_idle: 5s, idle_conn: 2s, response_header: 5s}
resources: {max_client_conns: %d, max_tunnels: 12, max_queued: 8, max_buffered_bytes: 131072, max_keys: 64}
upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [%d/1s]
    max_wait: 2s
    learn: {mode: off}
    throttle: {default_wait: 1s, retry: {max_attempts: 2, max_body: 65536}}
  - name: apis
    hosts: [other.test]
    connect_to: %s
    identity: [{header: apikey}]
    limits: [%d/1s]
    max_wait: 2s
    learn: {mode: off}
`, t.TempDir(), getPKI(t).caFile, echoPort, soakMaxConns, up.Listener.Addr(), soakLimit, ups.Listener.Addr(), soakLimit)
	cfg, err := config.Parse("soak.yaml", []byte(yamlText))
	if err != nil {
		t.Fatal(err)
	}
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), w.logs, zapcore.InfoLevel))
	w.store = quota.NewMemoryStore(nil, quota.WithMaxKeys(cfg.Resources.MaxKeys))
	w.srv, err = proxy.New(cfg, proxy.Options{Log: log, Store: w.store})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go w.srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		w.srv.Shutdown(ctx)
	})
	w.proxyURL = &url.URL{Scheme: "http", Host: ln.Addr().String()}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(w.srv.CA().CertPEM())
	w.plain = &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(w.proxyURL), MaxIdleConnsPerHost: 64}}
	w.intercepted = &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(w.proxyURL), TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 64}}
	return w
}

// soakUpstream answers by path: ok, big, slow, stall (headers, then
// nothing for longer than upstream_body_idle), reset (half a body, then a
// reset), throttle (a 429 one time in three), upload, ws (an echoing
// WebSocket).
func soakUpstream(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	switch r.URL.Path {
	case "/big":
		w.Write(make([]byte, 256<<10))
	case "/slow":
		time.Sleep(200 * time.Millisecond)
		io.WriteString(w, "slow")
	case "/stall":
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "part")
		w.(http.Flusher).Flush()
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	case "/reset":
		w.Header().Set("Content-Length", "100000")
		w.Write(make([]byte, 10000))
		w.(http.Flusher).Flush()
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not a clean close
		}
		c.Close()
	case "/throttle":
		if rand.IntN(3) == 0 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		io.WriteString(w, "ok")
	case "/ws":
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.Copy(c, brw)
	default:
		io.WriteString(w, "ok")
	}
}

func (w *soakWorld) count(outcome string) {
	v, _ := w.outcomes.LoadOrStore(outcome, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func (w *soakWorld) counts() string {
	var parts []string
	total := int64(0)
	w.outcomes.Range(func(k, v any) bool {
		n := v.(*atomic.Int64).Load()
		total += n
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
		return true
	})
	sort.Strings(parts)
	return fmt.Sprintf("%d exchanges (%s)", total, strings.Join(parts, ", "))
}

func (w *soakWorld) limitLines() string {
	w.logs.mu.Lock()
	defer w.logs.mu.Unlock()
	var parts []string
	for k, n := range w.logs.limits {
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// warmUp runs each scenario a few times, so that pools and caches exist
// before the baseline, then lets the connections close.
func (w *soakWorld) warmUp() {
	ctx := context.Background()
	for i := range 3 {
		for s := range soakScenarios {
			w.scenario(ctx, s, rand.New(rand.NewPCG(uint64(i), uint64(s))))
		}
	}
	w.quiesce()
}

// quiesce closes the clients' idle connections and waits for the proxy's
// timeouts to close what is left of the traffic.
func (w *soakWorld) quiesce() {
	w.plain.CloseIdleConnections()
	w.intercepted.CloseIdleConnections()
	time.Sleep(6 * time.Second) // client_idle 5s, idle_conn 2s, tunnel_idle 2s, windows 1s
	w.plain.CloseIdleConnections()
	w.intercepted.CloseIdleConnections()
}

const soakScenarios = 12

// scenario runs scenario s once.
func (w *soakWorld) scenario(ctx context.Context, s int, rng *rand.Rand) {
	key := fmt.Sprint("k", rng.IntN(soakSteady))
	switch s {
	case 0, 1: // plain GETs of steady keys
		w.get(ctx, w.plain, "http://api.test/ok", key, "ok")
	case 2: // intercepted GETs
		w.get(ctx, w.intercepted, "https://other.test/big", key, "intercepted")
	case 3: // keys made up on the spot
		w.get(ctx, w.plain, "http://api.test/ok", fmt.Sprintf("new-%d", rng.Int64()), "new_key")
	case 4: // retried uploads
		body := strings.Repeat("u", 1+rng.IntN(60000))
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://api.test/throttle", strings.NewReader(body))
		req.Header.Set("apikey", key)
		req.Header.Set("Idempotency-Key", fmt.Sprint(rng.Int64()))
		w.do(w.plain, req, "upload")
	case 5: // a body that trickles past client_body
		pr, pw := io.Pipe()
		go func() {
			defer pw.Close()
			for range 10 {
				select {
				case <-time.After(500 * time.Millisecond):
				case <-ctx.Done():
					return
				}
				if _, err := pw.Write([]byte("x")); err != nil {
					return
				}
			}
		}()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://api.test/upload", pr)
		req.ContentLength = 10
		req.Header.Set("apikey", key)
		w.do(w.plain, req, "slow_body")
	case 6: // a client that vanishes while queued or half-way through an answer
		cctx, cancel := context.WithTimeout(ctx, time.Duration(rng.IntN(300))*time.Millisecond)
		defer cancel()
		w.get(cctx, w.plain, "http://api.test/big", key, "vanishing")
	case 7: // an upstream that stalls after its headers
		w.get(ctx, w.plain, "http://api.test/stall", key, "stall")
	case 8: // an upstream that resets half-way through a body
		if rng.IntN(2) == 0 {
			w.get(ctx, w.intercepted, "https://other.test/reset", key, "reset_intercepted")
		} else {
			w.get(ctx, w.plain, "http://api.test/reset", key, "reset")
		}
	case 9: // a tunnel, used, then left to tunnel_idle or closed
		w.tunnel(ctx, rng)
	case 10: // a WebSocket, used, then left to tunnel_idle or closed
		w.websocket(ctx, key, rng)
	case 11: // slow answers
		w.get(ctx, w.intercepted, "https://other.test/slow", key, "slow_answer")
	}
}

func (w *soakWorld) get(ctx context.Context, c *http.Client, rawURL, key, name string) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	req.Header.Set("apikey", key)
	w.do(c, req, name)
}

func (w *soakWorld) do(c *http.Client, req *http.Request, name string) {
	resp, err := c.Do(req)
	if err != nil {
		w.count(name + ":error(" + errClass(err) + ")")
		return
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		w.count(name + ":cut")
	default:
		w.count(fmt.Sprintf("%s:%d", name, resp.StatusCode))
	}
}

func (w *soakWorld) tunnel(ctx context.Context, rng *rand.Rand) {
	c, err := net.DialTimeout("tcp", w.proxyURL.Host, 5*time.Second)
	if err != nil {
		w.count("tunnel:dial_error")
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", w.echoAddr, w.echoAddr)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		w.count(fmt.Sprint("tunnel:refused_", statusOf(resp)))
		return
	}
	io.WriteString(c, "hello\n")
	if line, err := br.ReadString('\n'); err != nil || line != "hello\n" {
		w.count("tunnel:broken")
		return
	}
	if rng.IntN(2) == 0 { // idle until the proxy closes it
		_, err := br.ReadByte()
		if err == io.EOF {
			w.count("tunnel:idle_closed")
		} else {
			w.count("tunnel:idle_not_closed")
		}
		return
	}
	w.count("tunnel:ok")
}

func (w *soakWorld) websocket(ctx context.Context, key string, rng *rand.Rand) {
	c, err := net.DialTimeout("tcp", w.proxyURL.Host, 5*time.Second)
	if err != nil {
		w.count("ws:dial_error")
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET http://api.test/ws HTTP/1.1\r\nHost: api.test\r\napikey: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", key)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		w.count(fmt.Sprint("ws:refused_", statusOf(resp)))
		return
	}
	io.WriteString(c, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		w.count("ws:broken")
		return
	}
	if rng.IntN(2) == 0 {
		if _, err := br.ReadByte(); err == io.EOF {
			w.count("ws:idle_closed")
		} else {
			w.count("ws:idle_not_closed")
		}
		return
	}
	w.count("ws:ok")
}

func statusOf(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}

func (w *soakWorld) worker(ctx context.Context, i int) {
	rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
	for ctx.Err() == nil {
		w.scenario(ctx, rng.IntN(soakScenarios), rng)
		w.sample()
		select {
		case <-time.After(time.Duration(rng.IntN(20)) * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// idleFlood keeps soakFloodSize connections open that send nothing, or
// half a request head, replacing the ones the proxy closes.
func (w *soakWorld) idleFlood(ctx context.Context) {
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for ctx.Err() == nil {
		kept := conns[:0]
		for _, c := range conns {
			c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
				c.Close()
				w.count("flood:closed_by_proxy")
				continue
			}
			kept = append(kept, c)
		}
		conns = kept
		for len(conns) < soakFloodSize && ctx.Err() == nil {
			c, err := net.DialTimeout("tcp", w.proxyURL.Host, time.Second)
			if err != nil {
				w.count("flood:dial_error")
				break
			}
			if len(conns)%2 == 0 {
				io.WriteString(c, "GET http://api.test/ HTTP/1.1\r\nHo")
			}
			conns = append(conns, c)
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// errClass names an error by its end: "EOF", "connection reset by peer",
// "context deadline exceeded".
func errClass(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// sample records the peaks of what the proxy holds.
func (w *soakWorld) sample() {
	peak := func(p *atomic.Int64, v int64) {
		for {
			old := p.Load()
			if v <= old || p.CompareAndSwap(old, v) {
				return
			}
		}
	}
	peak(&w.peakConns, int64(proxy.ClientConns(w.srv)))
	peak(&w.peakQueued, proxy.InAdmission(w.srv))
	peak(&w.peakBuffered, proxy.BufferedBytes(w.srv))
	peak(&w.peakTunnels, proxy.TunnelsOpen(w.srv))
}

// soakState is what the process holds.
type soakState struct {
	goroutines int
	heap       uint64 // live heap after a collection
	rss        uint64
	fds        int
	conns      int
	queued     int64
	buffered   int64
	tunnels    int64
	keys       int
}

func (s soakState) String() string {
	return fmt.Sprintf("%d goroutines, heap %.1f MiB, RSS %.1f MiB, %d fds, %d client connections, %d waiting, %d body bytes, %d tunnels, %d keys",
		s.goroutines, float64(s.heap)/(1<<20), float64(s.rss)/(1<<20), s.fds, s.conns, s.queued, s.buffered, s.tunnels, s.keys)
}

func (w *soakWorld) measure() soakState {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := soakState{
		goroutines: runtime.NumGoroutine(),
		heap:       ms.HeapAlloc,
		conns:      proxy.ClientConns(w.srv),
		queued:     proxy.InAdmission(w.srv),
		buffered:   proxy.BufferedBytes(w.srv),
		tunnels:    proxy.TunnelsOpen(w.srv),
		keys:       w.store.Keys(),
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		st.fds = len(fds)
	}
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		var kb uint64
		fmt.Sscanf(textBetween(string(status), "VmRSS:", "kB"), "%d", &kb)
		st.rss = kb << 10
	}
	return st
}

// settle waits, up to a minute, for the proxy to let go of what the
// traffic left.
func (w *soakWorld) settle(base soakState) soakState {
	deadline := time.Now().Add(time.Minute)
	for {
		w.quiesce()
		st := w.measure()
		if st.goroutines <= base.goroutines+soakGoroutineSlack && st.fds <= base.fds+soakFDSlack && st.conns == 0 || time.Now().After(deadline) {
			return st
		}
	}
}

const (
	soakGoroutineSlack = 5
	soakFDSlack        = 5
	soakHeapSlack      = 8 << 20
)

func (w *soakWorld) checkBack(base, end soakState) {
	t := w.t
	if end.goroutines > base.goroutines+soakGoroutineSlack {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after the soak, %d before:\n%s", end.goroutines, base.goroutines, buf[:runtime.Stack(buf, true)])
	}
	if end.fds > base.fds+soakFDSlack {
		t.Errorf("%d file descriptors after the soak, %d before", end.fds, base.fds)
	}
	if end.heap > base.heap+soakHeapSlack {
		t.Errorf("live heap %.1f MiB after the soak, %.1f MiB before", float64(end.heap)/(1<<20), float64(base.heap)/(1<<20))
	}
	if end.conns != 0 || end.queued != 0 || end.buffered != 0 || end.tunnels != 0 {
		t.Errorf("the proxy still holds %d client connections, %d waiting requests, %d body bytes, %d tunnels", end.conns, end.queued, end.buffered, end.tunnels)
	}
}

// checkQuotas: every steady key has nothing queued or on its way, and its
// full quota passes at once: no slot was lost to a vanished client, a cut
// body or a reset.
func (w *soakWorld) checkQuotas() {
	t := w.t
	ctx := context.Background()
	limits := []quota.Limit{{Count: soakLimit, Window: time.Second + 10*time.Millisecond}}
	for i := range soakSteady {
		key := fmt.Sprint("k", i)
		sum := sha256.Sum256([]byte(key))
		storeKey := "api/cred/" + hex.EncodeToString(sum[:])
		for {
			st, err := w.store.Inspect(ctx, storeKey, limits)
			if err != nil {
				t.Fatal(err)
			}
			if st.Queued != 0 || st.InFlight != 0 {
				t.Errorf("key %s: %d queued and %d on their way after the soak, want none", key, st.Queued, st.InFlight)
			}
			if st.Booked != 0 {
				time.Sleep(500 * time.Millisecond) // a refusal's booked slot, kept until its grace ends
				continue
			}
			if wait := time.Until(st.HoldUntil); wait > 0 {
				time.Sleep(wait + 100*time.Millisecond) // a throttle's hold
				continue
			}
			if st.Probing {
				// After a throttle's hold one request goes first, alone:
				// send it, so that the key is open again.
				w.get(ctx, w.plain, "http://api.test/ok", key, "probe")
				continue
			}
			if len(st.Limits) > 0 && st.Limits[0].Used != 0 {
				time.Sleep(1100 * time.Millisecond)
				continue
			}
			break
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		var failed []string
		for range soakLimit {
			wg.Go(func() {
				start := time.Now()
				req, _ := http.NewRequest(http.MethodGet, "http://api.test/ok", nil)
				req.Header.Set("apikey", key)
				a := ""
				resp, err := w.plain.Do(req)
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						a = fmt.Sprintf("%d %s", resp.StatusCode, body)
					}
				} else {
					a = err.Error()
				}
				if took := time.Since(start); a == "" && took > 500*time.Millisecond {
					a = fmt.Sprintf("waited %v", took)
				}
				if a != "" {
					mu.Lock()
					failed = append(failed, a)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(failed) > 0 {
			t.Errorf("key %s: %d of its %d per second did not pass at once (a slot was lost): %q", key, len(failed), soakLimit, failed)
		}
	}
}
