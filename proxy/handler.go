package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"go.uber.org/zap"
)

// Decisions, as logged.
const (
	decisionPass       = "pass"        // admitted at once
	decisionQueued     = "queued"      // admitted after a wait
	decisionRejected   = "rejected"    // over quota: local 429
	decisionQueueFull  = "queue_full"  // too many waiting: local 429
	decisionClientGone = "client_gone" // the client left before the upstream answered
	decisionUnlimited  = "unlimited"   // host without a policy, forwarded
	decisionDenied     = "denied"      // host without a policy, refused
	decisionError      = "error"       // the proxy could not get an answer
)

// exchange is what the proxy learns about one request, for its log line
// and for settling its reservation.
type exchange struct {
	start    time.Time
	up       *upstream
	id       identity
	res      quota.Reservation
	decision string
	wait     time.Duration
	status   int
	err      string
	done     atomic.Bool // the reservation was settled or cancelled
}

type exchangeKey struct{}

// ServeHTTP serves proxy requests: CONNECT, absolute-form requests, and
// the origin-form requests of intercepted connections.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		s.serveConnect(w, r)
		return
	}
	x := &exchange{start: time.Now()}
	defer s.logExchange(r, x)

	if target, ok := r.Context().Value(interceptKey{}).(string); ok {
		r.URL.Scheme, r.URL.Host = "https", target
	} else if !r.URL.IsAbs() || r.URL.Host == "" {
		x.decision = decisionError
		s.writeError(w, x, http.StatusBadRequest, "NOT_A_PROXY_REQUEST",
			"this is ratelimit-proxy: send requests through it as a proxy (HTTP_PROXY/HTTPS_PROXY), not to it")
		return
	}
	if r.URL.Scheme != "http" && r.URL.Scheme != "https" {
		x.decision = decisionError
		s.writeError(w, x, http.StatusBadRequest, "UNSUPPORTED_SCHEME", "only http and https URLs can be proxied")
		return
	}

	x.up = s.routes.route(r.URL.Host)
	if x.up == nil {
		if s.denyUnknown {
			x.decision = decisionDenied
			s.writeError(w, x, http.StatusForbidden, "HOST_NOT_ALLOWED", "no upstream policy for this host, and unknown_hosts is deny")
			return
		}
		x.decision = decisionUnlimited
		s.forward(w, r, x)
		return
	}
	x.id = x.up.identify(r)
	req := quota.Request{Key: x.id.key, Limits: x.id.limits.enforced, MaxQueue: x.up.maxQueue}
	if !x.up.reject {
		req.MaxWait = x.up.maxWait
	}
	res, err := s.store.Reserve(r.Context(), req)
	if err != nil {
		x.decision = decisionError
		s.log.Error("quota store failed", zap.String("upstream", x.up.name), zap.String("key", x.id.fingerprint), zap.Error(err))
		s.writeError(w, x, http.StatusServiceUnavailable, "QUOTA_STORE_UNAVAILABLE", "the quota store did not answer; retry shortly")
		return
	}
	x.res = res
	if !res.OK {
		x.decision = decisionRejected
		if res.QueueFull {
			x.decision = decisionQueueFull
		}
		s.writeRateLimited(w, x)
		return
	}
	x.decision = decisionPass
	for d := res.Delay(); d > 0; d = x.res.Delay() {
		// Queued: wait for the slot, then let the store check it again
		// against what it learned meanwhile (earlier requests that left
		// later than booked); it may name a later slot.
		x.decision = decisionQueued
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			s.cancel(x)
			x.decision = decisionClientGone
			x.wait = time.Since(x.start)
			return
		}
		if x.res, err = s.store.Release(r.Context(), x.res); err != nil {
			s.cancel(x)
			x.decision = decisionError
			s.log.Error("quota store failed", zap.String("upstream", x.up.name), zap.String("key", x.id.fingerprint), zap.Error(err))
			s.writeError(w, x, http.StatusServiceUnavailable, "QUOTA_STORE_UNAVAILABLE", "the quota store did not answer; retry shortly")
			return
		}
	}
	x.wait = time.Since(x.start)
	s.forward(w, r, x)
}

// forward sends the request upstream and copies the answer back. Errors
// reach forwardError. The reservation is settled with the time the request
// was written upstream, so that later requests are timed from when this
// one really left, not from when it was allowed to.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, x *exchange) {
	ctx := context.WithValue(r.Context(), exchangeKey{}, x)
	if x.res.OK {
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { s.settle(x, time.Now()) },
		})
	}
	s.forwarder.ServeHTTP(w, r.WithContext(ctx))
	s.settle(x, time.Now()) // if the request was never written: now is a safe upper bound
}

// noteResponse records the upstream status for the log line.
func (s *Server) noteResponse(resp *http.Response) error {
	if x, ok := resp.Request.Context().Value(exchangeKey{}).(*exchange); ok {
		x.status = resp.StatusCode
	}
	return nil
}

// forwardError turns a failed upstream round trip into a clear answer: 504
// for a timeout, 502 otherwise. A request that provably never reached the
// upstream (the connection could not be made) gives its slot back.
func (s *Server) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	x, _ := r.Context().Value(exchangeKey{}).(*exchange)
	if x == nil {
		x = &exchange{}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // never echo the URL: its query may hold a credential
	}
	if neverSent(err) {
		s.cancel(x)
	}
	if r.Context().Err() != nil {
		x.decision = decisionClientGone
		x.err = "client went away"
		return
	}
	x.decision = decisionError
	x.err = err.Error()
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		s.writeError(w, x, http.StatusGatewayTimeout, "UPSTREAM_TIMEOUT", "the upstream did not answer in time: "+x.err)
		return
	}
	s.writeError(w, x, http.StatusBadGateway, "UPSTREAM_UNREACHABLE", "the upstream could not be reached: "+x.err)
}

// neverSent reports errors that happen before any byte of the request
// reaches the upstream: failing to connect, or to trust it.
func neverSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var verr *tls.CertificateVerificationError
	var uerr x509.UnknownAuthorityError
	var herr x509.HostnameError
	var rerr tls.RecordHeaderError
	return errors.As(err, &verr) || errors.As(err, &uerr) || errors.As(err, &herr) || errors.As(err, &rerr)
}

// cancel gives the reservation back; settle records its send time. Only
// the first of them, once, reaches the store.
func (s *Server) cancel(x *exchange) {
	if x.res.OK && x.done.CompareAndSwap(false, true) {
		if err := s.store.Cancel(context.Background(), x.res); err != nil {
			s.log.Warn("giving a slot back failed", zap.String("key", x.id.fingerprint), zap.Error(err))
		}
	}
}

func (s *Server) settle(x *exchange, sentAt time.Time) {
	if x.res.OK && x.done.CompareAndSwap(false, true) {
		if err := s.store.Settle(context.Background(), x.res, sentAt); err != nil {
			s.log.Warn("settling a slot failed", zap.String("key", x.id.fingerprint), zap.Error(err))
		}
	}
}

// writeRateLimited answers for the upstream: 429, Retry-After in whole
// seconds rounded up (so that a retry then is admitted when no one else
// took the quota), the IETF RateLimit-Policy and RateLimit headers, and a
// JSON body.
func (s *Server) writeRateLimited(w http.ResponseWriter, x *exchange) {
	secs := ceilSeconds(x.res.Delay())
	limit, _ := x.id.limits.shownFor(x.res.Binding)
	h := w.Header()
	h.Set("Retry-After", itoa(secs))
	if x.id.limits.policy != "" {
		h.Set("RateLimit-Policy", x.id.limits.policy)
		h.Set("RateLimit", strconv.Quote(limit.String())+";r=0;t="+itoa(secs))
	}
	msg := "quota of " + x.up.name + " exhausted for this key (" + limit.String() + "); retry after " + itoa(secs) + "s"
	if x.res.QueueFull {
		msg = "too many requests of this key are already waiting for " + x.up.name + " (max_queue); retry after " + itoa(secs) + "s"
	}
	x.status = http.StatusTooManyRequests
	writeJSON(w, http.StatusTooManyRequests, errorBody{Error: errorDetail{
		Code: "RATE_LIMITED", Message: msg, RetryAfterSeconds: secs, Source: "proxy",
	}})
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code              string `json:"code"`
	Message           string `json:"message"`
	RetryAfterSeconds int64  `json:"retry_after_seconds,omitempty"`
	Source            string `json:"source"`
}

func (s *Server) writeError(w http.ResponseWriter, x *exchange, status int, code, msg string) {
	x.status = status
	writeJSON(w, status, errorBody{Error: errorDetail{Code: code, Message: msg, Source: "proxy"}})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	data, _ := json.Marshal(body)
	data = append(data, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	w.Write(data)
}

// logExchange writes the one line per request. It names the key by its
// fingerprint only and the path without its query.
func (s *Server) logExchange(r *http.Request, x *exchange) {
	if ce := s.log.Check(zap.InfoLevel, "request"); ce != nil {
		upstream, key, rule := "", "", ""
		if x.up != nil {
			upstream, key, rule = x.up.name, x.id.fingerprint, x.id.rule
		}
		fields := []zap.Field{
			zap.String("upstream", upstream),
			zap.String("method", r.Method),
			zap.String("host", r.URL.Host),
			zap.String("path", r.URL.Path),
			zap.String("key", key),
			zap.String("identity", rule),
			zap.String("decision", x.decision),
			zap.Float64("queue_wait_ms", float64(x.wait.Microseconds())/1000),
			zap.Int("status", x.status),
			zap.Float64("latency_ms", float64(time.Since(x.start).Microseconds())/1000),
		}
		if x.err != "" {
			fields = append(fields, zap.String("error", x.err))
		}
		ce.Write(fields...)
	}
}
