package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// A simulation runs clients, the real proxy and upstreams in one
// testing/synctest bubble, connected by an in-memory network (memNet). Its
// clock is fake and advances only when every goroutine waits, so a window
// of seconds passes in microseconds and every time a test reads is exact:
// the any-window bound and utilization are checked to the nanosecond on a
// machine however loaded. Nothing in a simulation takes time but waiting,
// so the upstream sees a request at the instant the proxy writes it; tests
// of latency add it on purpose (a relay, a handler that sleeps).

// simEpoch is when every simulation starts.
var simEpoch = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// sim is one simulated world. Create it with runSim.
type sim struct {
	t       *testing.T
	net     *memNet
	proxies int // proxies started, for their addresses
}

// runSim runs f in a bubble with a fresh in-memory network. Everything
// started through the sim is stopped before the bubble ends.
func runSim(t *testing.T, f func(t *testing.T, s *sim)) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		// A bubble's clock starts at 2000-01-01, where an epoch in
		// seconds (X-RateLimit-Reset) is below 1e9 and reads as a number
		// of seconds: wait, instantly, until a date like today's.
		time.Sleep(time.Until(simEpoch))
		f(t, &sim{t: t, net: newMemNet()})
	})
}

// serve runs an HTTP server with h on addr until the test ends.
func (s *sim) serve(addr string, h http.Handler) {
	s.start(&http.Server{Handler: h}, s.net.Listen(addr))
}

// start serves srv on ln until the test ends, then closes it and waits
// for its handlers to return: the bubble may not end while one sleeps. (A
// WaitGroup would not do: a handler may start while the cleanup waits.)
func (s *sim) start(srv *http.Server, ln net.Listener) {
	var mu sync.Mutex
	done := sync.NewCond(&mu)
	running, closed := 0, false
	h := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if closed {
			mu.Unlock()
			http.Error(w, "closed", http.StatusServiceUnavailable)
			return
		}
		running++
		mu.Unlock()
		defer func() {
			mu.Lock()
			running--
			done.Broadcast()
			mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
	go srv.Serve(ln)
	s.t.Cleanup(func() {
		srv.Close()
		mu.Lock()
		closed = true
		for running > 0 {
			done.Wait()
		}
		mu.Unlock()
	})
}

// recorder starts a recording upstream on addr, speaking TLS with the test
// PKI's server certificate when useTLS (the proxy then needs the PKI's CA
// in upstream_roots: see simUpstreamYAML).
func (s *sim) recorder(addr string, useTLS bool) *recorder {
	rec := &recorder{address: addr}
	srv := &http.Server{Handler: http.HandlerFunc(rec.serve), ConnState: rec.countConns}
	var ln net.Listener = s.net.Listen(addr)
	if useTLS {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{getPKI(s.t).server}})
	}
	s.start(srv, ln)
	return rec
}

// simProxy is the proxy of a simulation.
type simProxy struct {
	srv    *proxy.Server
	addr   string
	logs   *syncBuffer
	caPool *x509.CertPool
	net    *memNet
	t      *testing.T
}

// proxy starts a proxy (on proxyN.test:8080) with yamlText and the memory
// store.
func (s *sim) proxy(yamlText string) *simProxy {
	return s.proxyWith(yamlText, quota.NewMemoryStore(nil))
}

// proxyWith starts the proxy with the given store.
func (s *sim) proxyWith(yamlText string, store quota.Store) *simProxy {
	return s.proxyDial(yamlText, store, s.net.Dial)
}

// proxyDial starts the proxy with the given store and upstream dialer.
func (s *sim) proxyDial(yamlText string, store quota.Store, dial func(context.Context, string, string) (net.Conn, error)) *simProxy {
	t := s.t
	t.Helper()
	cfg, err := config.Parse("sim.yaml", []byte(fmt.Sprintf("data_dir: %s\nupstream_roots: [%s]\n%s", t.TempDir(), getPKI(t).caFile, yamlText)))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), logs, zapcore.DebugLevel))
	srv, err := proxy.New(cfg, proxy.Options{Log: log, Store: store, Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	s.proxies++
	p := &simProxy{srv: srv, addr: fmt.Sprintf("proxy%d.test:8080", s.proxies), logs: logs, net: s.net, t: t}
	go srv.Serve(s.net.Listen(p.addr))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	p.caPool = x509.NewCertPool()
	p.caPool.AppendCertsFromPEM(srv.CA().CertPEM())
	return p
}

// client returns a client that sends every request through the proxy and
// trusts its CA. Its idle connections are closed when the test ends.
func (p *simProxy) client() *http.Client {
	tr := &http.Transport{
		Proxy:               http.ProxyURL(&url.URL{Scheme: "http", Host: p.addr}),
		DialContext:         p.net.Dial,
		TLSClientConfig:     &tls.Config{RootCAs: p.caPool},
		MaxIdleConnsPerHost: 1000,
	}
	p.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// simUpstreamYAML is upstreamYAML for a simulation: one upstream named api
// claiming api.test, routed to addr, keyed on the apikey header.
func simUpstreamYAML(addr, extra string) string {
	return fmt.Sprintf(`upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity:
      - header: apikey
%s`, addr, indent(extra, "    "))
}

// utilization is the rate achieved over ts, sorted send times of a key
// pushed beyond its limit n/w: under saturation request i+n follows
// request i by w, so w over the mean of those gaps is 1 at full use.
func utilization(ts []time.Time, n int, w time.Duration) float64 {
	if len(ts) <= n {
		return 0
	}
	var sum time.Duration
	for i := n; i < len(ts); i++ {
		sum += ts[i].Sub(ts[i-n])
	}
	return float64(w) / float64(sum/time.Duration(len(ts)-n))
}

// windowViolations describes every pair of times n apart that are closer
// than w, for failure messages.
func windowViolations(ts []time.Time, n int, w time.Duration) string {
	var b strings.Builder
	for i := n; i < len(ts); i++ {
		if gap := ts[i].Sub(ts[i-n]); gap < w {
			fmt.Fprintf(&b, "\n  arrivals %d at +%v and %d at +%v are %v apart", i-n, ts[i-n].Sub(ts[0]), i, ts[i].Sub(ts[0]), gap)
		}
	}
	return b.String()
}
