// Package proxy is the HTTP side of ratelimit-proxy: a forward proxy that
// intercepts TLS for the hosts it has a policy for, keys each request to the
// credential it carries, asks the quota engine when it may leave, forwards
// it over a pooled upstream transport, and answers "slow down" in one way:
// HTTP 429 with a truthful Retry-After.
//
// Plain HTTP requests and requests inside intercepted CONNECT tunnels are
// served by the same handler. Intercepted connections are served by a
// second net/http server, so they get the same keep-alive handling,
// timeouts, client-disconnect detection and graceful shutdown as direct
// ones.
package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
)

// Server is the proxy. Create it with New, run it with Serve, stop it with
// Shutdown. It is safe for concurrent use.
type Server struct {
	keySecret []byte // store keys are HMAC-SHA256 under it (Options.KeySecret)
	log       *zap.Logger
	observers decision.Observers // told of every exchange: the log line first
	store     quota.Store
	ca        *CA
	policy    atomic.Pointer[Policy] // swapped whole by Reload
	fixed     fixedSettings          // what Reload cannot change
	timeouts  config.Timeouts
	requests  config.Requests // header bounds of client requests
	maxLogged int             // bytes of a path or host kept in a log line
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	egress    *egressGuard // judges the dials of the default dialer

	resources   config.Resources
	limits      resourceLogs
	admitting   atomic.Int64 // requests in admission, waiting ones included (resources.max_queued)
	buffered    byteBudget   // request body bytes held in memory (resources.max_buffered_bytes)
	conns       *connLimiter // client connections (resources.max_client_conns)
	tunnelCount atomic.Int64 // tunnels open (resources.max_tunnels)

	reloadMu       sync.Mutex // one reload at a time
	reloadsApplied atomic.Uint64
	reloadsRefused atomic.Uint64

	transport *http.Transport
	buffers   *sync.Pool             // body copy buffers (*[]byte)
	upgrader  *httputil.ReverseProxy // forwards protocol upgrades (WebSocket)

	// base is the context of every connection; Shutdown cancels it with
	// errShuttingDown at its deadline, which stops what still waits.
	base        context.Context
	stopWaiting context.CancelCauseFunc

	outer       *http.Server   // the proxy listener
	inner       *http.Server   // serves intercepted TLS connections
	innerLn     *connListener  // feeds inner
	innerDone   chan struct{}  // closed when inner.Serve returns
	tunnels     sync.WaitGroup // untouched CONNECT tunnels in flight
	tunnelMu    sync.Mutex
	tunnelConns map[net.Conn]struct{}
	closing     bool // no new tunnels

	directConns      atomic.Int64 // client connections served by outer
	interceptedConns atomic.Int64 // intercepted connections served by inner
	openTunnels      atomic.Int64 // untouched tunnels
}

// Options are what a Server needs besides its configuration.
type Options struct {
	// Log receives one line per request and the proxy's own events; nil
	// logs nothing.
	Log *zap.Logger
	// Store books every request's slot. Required.
	Store quota.Store
	// KeySecret, when set, makes every store key a full HMAC-SHA256 of the
	// credential under it instead of its SHA-256: required with a store
	// shared by replicas (they must all use the same secret). Logs show the
	// same fingerprint either way.
	KeySecret []byte
	// Dial opens connections to upstreams and to the targets of untouched
	// tunnels. Nil dials TCP with the configured dial timeout, through the
	// egress guard. A Dial given here replaces that dialer, and with it the
	// guard, which checks each address in the dialer's Control hook: tests
	// give an in-memory network here.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Observers are told of every exchange when it ends, after the log
	// line, with the same record (metrics, the quota API).
	Observers []decision.Observer
}

// New builds a Server from a configuration. It compiles the configuration
// (an error, never a panic, when it is incomplete; see Compile), loads or
// creates the CA and starts the internal server for intercepted
// connections; call Shutdown to release it.
func New(cfg *config.Config, opts Options) (*Server, error) {
	log, store := opts.Log, opts.Store
	if log == nil {
		log = zap.NewNop()
	}
	if store == nil {
		return nil, errors.New("proxy: no quota store")
	}
	if cfg == nil {
		return nil, errors.New("proxy: no configuration")
	}
	if err := checkTimeouts(cfg.Timeouts); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if err := checkResources(cfg.Resources); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if cfg.MaxIdleConnsPerHost < 0 {
		return nil, errors.New("proxy: max_idle_conns_per_host must not be negative")
	}
	policy, err := Compile(cfg)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	policy.keyedBy(opts.KeySecret)
	guard := &egressGuard{}
	guard.addListener(cfg.Listen)
	if cfg.Admin != "" {
		guard.addListener(cfg.Admin)
	}
	dial := opts.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: time.Duration(cfg.Timeouts.Dial), KeepAlive: 30 * time.Second, ControlContext: guard.control}
		dial = d.DialContext
	}
	ca, err := LoadOrCreateCA(cfg.CACert, cfg.CAKey)
	if err != nil {
		return nil, err
	}
	roots, err := upstreamRoots(cfg.UpstreamRoots)
	if err != nil {
		return nil, err
	}
	s := &Server{
		keySecret:   opts.KeySecret,
		log:         log,
		observers:   append(decision.Observers{decision.Logger(log)}, opts.Observers...),
		store:       store,
		ca:          ca,
		fixed:       fixedOf(cfg),
		timeouts:    cfg.Timeouts,
		requests:    cfg.Requests,
		maxLogged:   cfg.Log.MaxPathBytes,
		dial:        dial,
		egress:      guard,
		tunnelConns: map[net.Conn]struct{}{},
		resources:   cfg.Resources,
	}
	s.limits = newResourceLogs(log, cfg.Resources)
	s.buffered.max = cfg.Resources.MaxBufferedBytes
	ca.limitLeaves(cfg.Resources.MaxLeafCerts, s.limits.leafCerts.hit)
	s.conns = newConnLimiter(s, cfg.Resources.MaxClientConns)
	s.dial = s.conns.dialer(dial)
	s.policy.Store(policy)
	guard.current = func() *egressPolicy { return s.policy.Load().egress }
	s.base, s.stopWaiting = context.WithCancelCause(context.Background())
	if sharer, ok := store.(quota.MarginSharer); ok {
		go s.syncMargins(s.base, sharer)
	}
	s.transport = s.newTransport(cfg, roots, s.dial)
	s.buffers = newBuffers()
	s.upgrader = &httputil.ReverseProxy{
		Rewrite:        func(*httputil.ProxyRequest) {}, // the URL is already absolute; no X-Forwarded-*
		Transport:      upstreamTransport{s},
		BufferPool:     bufferPool{s.buffers},
		ModifyResponse: s.modifyUpgradeResponse,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			x, _ := r.Context().Value(exchangeKey{}).(*exchange)
			if x == nil {
				x = &exchange{}
			}
			s.forwardError(w, r, x, err)
		},
		ErrorLog: zap.NewStdLog(log.Named("forward")),
	}

	errLog := zap.NewStdLog(log.Named("http"))
	base := func(net.Listener) context.Context { return s.base }
	// MaxHeaderBytes bounds what net/http reads of a request's head
	// (it allows 4 KiB more); ServeHTTP enforces the exact bounds.
	s.outer = &http.Server{
		Handler:           s,
		MaxHeaderBytes:    cfg.Requests.MaxHeaderBytes,
		ReadHeaderTimeout: time.Duration(cfg.Timeouts.ClientHeader),
		IdleTimeout:       time.Duration(cfg.Timeouts.ClientIdle),
		ErrorLog:          errLog,
		BaseContext:       base,
		ConnState:         s.connState(countConns(&s.directConns), s.conns.setState),
	}
	s.innerLn = newConnListener()
	s.inner = &http.Server{
		Handler:           s,
		MaxHeaderBytes:    cfg.Requests.MaxHeaderBytes,
		ReadHeaderTimeout: time.Duration(cfg.Timeouts.ClientHeader),
		IdleTimeout:       time.Duration(cfg.Timeouts.ClientIdle),
		ErrorLog:          errLog,
		BaseContext:       base,
		ConnContext:       interceptedContext,
		ConnState:         s.connState(countConns(&s.interceptedConns), s.conns.setInnerState),
	}
	tlsConfig := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			host := hello.ServerName
			if c, ok := hello.Conn.(*clientConn); ok {
				host = hostOnly(c.target)
			}
			return ca.Leaf(host)
		},
	}
	s.innerDone = make(chan struct{})
	go func() {
		defer close(s.innerDone)
		_ = s.inner.Serve(tls.NewListener(s.innerLn, tlsConfig))
	}()
	return s, nil
}

// CA returns the interception CA.
func (s *Server) CA() *CA { return s.ca }

// Serve accepts proxy connections on ln until Shutdown, at most
// resources.max_client_conns at a time (see connLimiter). It returns
// http.ErrServerClosed after Shutdown. The egress guard refuses
// connections to ln's address, as to the configured listen and admin
// addresses.
func (s *Server) Serve(ln net.Listener) error {
	s.egress.addListener(ln.Addr().String())
	return s.outer.Serve(s.conns.listen(ln))
}

// errShuttingDown is the cause with which Shutdown, at its deadline,
// cancels the requests still in the proxy: they are answered 503 with
// Retry-After.
var errShuttingDown = errors.New("the proxy is shutting down")

// answerGrace is how long Shutdown waits, after its deadline, for the
// answers to the requests it stopped to be written.
const answerGrace = time.Second

// Shutdown stops accepting connections and lets the requests in flight,
// queued ones included, finish until ctx is done. Then it stops the
// requests still waiting for their slot or for the upstream's answer and
// answers each 503 with Retry-After (never a closed connection), gives
// those answers up to a second to be written, and closes what remains,
// tunnels included. It returns ctx's error when it had to stop requests or
// tunnels.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.shutdownServers(ctx)
	if err != nil && ctx.Err() != nil {
		s.stopWaiting(errShuttingDown)
		grace, cancel := context.WithTimeout(context.Background(), answerGrace)
		_ = s.shutdownServers(grace)
		cancel()
	}
	s.tunnelMu.Lock()
	s.closing = true
	s.tunnelMu.Unlock()
	s.innerLn.Close()
	<-s.innerDone
	waited := make(chan struct{})
	go func() { s.tunnels.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
		s.tunnelMu.Lock()
		for c := range s.tunnelConns {
			c.Close()
		}
		s.tunnelMu.Unlock()
		<-waited
		err = errors.Join(err, ctx.Err())
	}
	s.stopWaiting(errShuttingDown)
	s.outer.Close()
	s.inner.Close()
	s.transport.CloseIdleConnections()
	s.limits.stop()
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// shutdownServers shuts both HTTP servers down until ctx is done. It may
// be called again after a first call returned.
func (s *Server) shutdownServers(ctx context.Context) error {
	innerErr := make(chan error, 1)
	go func() { innerErr <- s.inner.Shutdown(ctx) }()
	return errors.Join(s.outer.Shutdown(ctx), <-innerErr)
}

// connectToKey carries the connect_to of a routed request's upstream to
// the transport's dialer ("" for none): the request is for a configured
// upstream, which the egress guard allows. The route decides, not the
// dialer (which sees host:port but not the scheme): a request that routes
// to no upstream, a listed host on another port, is never redirected and
// goes through the guard. Connections are pooled by scheme and host:port,
// which decide the route, so a pooled connection serves one route; a
// reload that changes connect_to or the hosts closes the idle ones.
type connectToKey struct{}

// OpenConns counts the client connections open now: direct ones (plain
// HTTP, and CONNECTs not yet answered), intercepted ones (TLS the proxy
// terminates) and untouched tunnels. A connection handed to a protocol
// upgrade (WebSocket) is no longer counted.
func (s *Server) OpenConns() (direct, intercepted, tunnels int) {
	return int(s.directConns.Load()), int(s.interceptedConns.Load()), int(s.openTunnels.Load())
}

// countConns is a ConnState hook that keeps n at the number of connections
// the server serves.
func countConns(n *atomic.Int64) func(net.Conn, http.ConnState) {
	return func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			n.Add(1)
		case http.StateHijacked, http.StateClosed:
			n.Add(-1)
		}
	}
}

// newTransport is the upstream transport. It dials the connect_to of the
// request's upstream, if any, else the request's host; a host no upstream
// claims through the egress guard.
func (s *Server) newTransport(cfg *config.Config, roots *x509.CertPool, dial func(context.Context, string, string) (net.Conn, error)) *http.Transport {
	return &http.Transport{
		Proxy: nil, // never read HTTP_PROXY: the proxy must not dial itself
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if to, ok := ctx.Value(connectToKey{}).(string); ok {
				if to != "" {
					addr = to
				}
				ctx = context.WithValue(ctx, egressKey{}, explicitScope)
			} else {
				ctx = withEgressScope(ctx, addr, s.policy.Load().egress)
			}
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &sentConn{Conn: c}, nil
		},
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          0, // no global cap: MaxIdleConnsPerHost bounds each host
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:       time.Duration(cfg.Timeouts.IdleConn),
		TLSHandshakeTimeout:   time.Duration(cfg.Timeouts.TLSHandshake),
		ResponseHeaderTimeout: time.Duration(cfg.Timeouts.ResponseHeader),
		ExpectContinueTimeout: time.Second,
	}
}

// upstreamRoots is the system pool plus the configured extra roots.
func upstreamRoots(files []string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for i, f := range files {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("upstream_roots[%d]: %w", i, err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream_roots[%d]: %s holds no PEM certificate", i, f)
		}
	}
	return pool, nil
}

func hostOnly(hostport string) string {
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		return host
	}
	return strings.Trim(hostport, "[]")
}

// bufferPool lends the forwarder's buffers to ReverseProxy.
type bufferPool struct{ p *sync.Pool }

func (b bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b bufferPool) Put(v []byte) { b.p.Put(&v) }
