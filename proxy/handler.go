package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/fallback"
	"go.uber.org/zap"
)

// Decisions, as recorded (see package decision).
const (
	decisionPass       = decision.Pass
	decisionQueued     = decision.Queued
	decisionRejected   = decision.Rejected
	decisionQueueFull  = decision.QueueFull
	decisionClientGone = decision.ClientGone
	decisionUnlimited  = decision.Unlimited
	decisionDenied     = decision.Denied
	decisionError      = decision.Error
	decisionShutdown   = decision.Shutdown
)

// exchange is what the proxy learns about one request, for its record.
type exchange struct {
	start       time.Time
	up          *upstream
	id          identity
	res         quota.Reservation // the credential's last reservation
	decision    string
	wait        time.Duration
	attempts    int
	throttles   int    // upstream answers recognised as throttles
	throttle    string // the rule that recognised the last upstream throttle
	status      int
	err         string
	storeFailed bool  // the quota store failed to decide
	held        int64 // request body bytes held against resources.max_buffered_bytes

	w http.ResponseWriter // the client's, for 1xx answers; nil on the upgrade path

	// Kept here to spare allocations: the first attempt and its gates, and
	// the gates in use. (Not the record: every queued request would carry
	// it while it waits.)
	first    attempt
	gates    [2]gate
	gatePtrs [2]*gate
}

type exchangeKey struct{}

// ServeHTTP serves proxy requests: CONNECT, absolute-form requests, and
// the origin-form requests of intercepted connections.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if size, fields := headerSize(r); size > s.requests.MaxHeaderBytes || fields > s.requests.MaxHeaderFields {
		x := &exchange{start: time.Now(), decision: decisionError, status: http.StatusRequestHeaderFieldsTooLarge,
			err: fmt.Sprintf("request head of %d bytes in %d fields is beyond requests.max_header_bytes %d or max_header_fields %d",
				size, fields, s.requests.MaxHeaderBytes, s.requests.MaxHeaderFields)}
		defer s.record(r, x)
		refuse(w, x.status, "HEADERS_TOO_LARGE", fmt.Sprintf("the request's header fields exceed the proxy's bounds (%d bytes, %d fields)",
			s.requests.MaxHeaderBytes, s.requests.MaxHeaderFields))
		return
	}
	if !s.admitClient(w, r) {
		return
	}
	if r.Method == http.MethodConnect {
		s.serveConnect(w, r)
		return
	}
	x := &exchange{start: time.Now()}
	defer s.record(r, x)
	if ce := s.log.Check(zap.DebugLevel, "request received"); ce != nil {
		// Shows a request while it waits; the "request" line comes when
		// it is answered.
		ce.Write(zap.String("method", r.Method), zap.String("host", s.logged(r.Host)), zap.String("path", s.logged(r.URL.Path)))
	}

	if target, ok := r.Context().Value(interceptKey{}).(string); ok {
		if !sameAuthority(r.Host, target) {
			// The tunnel was opened, and its certificate made, for target:
			// a request naming another host is not for this connection.
			x.decision, x.err = decisionError, "Host does not name the CONNECT target "+s.logged(target)
			s.writeError(w, x, http.StatusMisdirectedRequest, "MISDIRECTED_REQUEST",
				"the Host header names another host than the CONNECT that opened this connection")
			return
		}
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

	policy := s.policy.Load() // the request keeps it, whatever a reload does
	x.up = policy.routes.route(r.URL.Host, defaultPort(r.URL.Scheme))
	if x.up == nil {
		if policy.unknownHosts == denyUnknown {
			x.decision = decisionDenied
			s.writeError(w, x, http.StatusForbidden, "HOST_NOT_ALLOWED", "no upstream policy for this host, and unknown_hosts is deny")
			return
		}
		if up := policy.reachedThrough(r.URL.Host, defaultPort(r.URL.Scheme)); up != nil {
			x.decision, x.err = decisionDenied, "the address is the connect_to of upstream "+up.name
			s.writeError(w, x, http.StatusMisdirectedRequest, "MISDIRECTED_REQUEST",
				"this address is where the proxy reaches one of its upstreams: send the request to the upstream's host name, so that it is counted")
			return
		}
		x.decision = decisionUnlimited
	} else {
		// The upstream sees the host as routing read it: "API.Test." is
		// api.test.
		r.URL.Host, r.Host = canonicalHostPort(r.URL.Host), canonicalHostPort(r.Host)
		var err error
		if x.id, err = x.up.identify(r); err != nil {
			x.decision, x.err = decisionError, err.Error()
			s.writeError(w, x, http.StatusBadRequest, "AMBIGUOUS_CREDENTIAL", err.Error())
			return
		}
	}
	// Admission, sending, throttles and retries happen in roundTrip.
	s.forward(w, r, x)
}

// forwardError turns a failed round trip into a clear answer: 504 for a
// timeout, 503 when the quota store failed, 502 otherwise. The body names
// the failure class only (see failure.go); the raw error goes to the log.
func (s *Server) forwardError(w http.ResponseWriter, r *http.Request, x *exchange, err error) {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // never echo the URL: its query may hold a credential
	}
	if r.Context().Err() != nil {
		if errors.Is(context.Cause(r.Context()), errShuttingDown) {
			s.shuttingDown(w, x)
			return
		}
		x.decision = decisionClientGone
		x.err = "client went away"
		return
	}
	x.decision = decisionError
	x.err = err.Error()
	var se errStore
	if errors.As(err, &se) {
		var un *fallback.Unavailable
		if errors.As(se.err, &un) {
			// on_store_error: reject. Logged once by the store, not per request.
			secs := ceilSeconds(un.RetryAfter)
			x.decision = decisionRejected
			x.status = http.StatusTooManyRequests
			w.Header().Set("Retry-After", itoa(secs))
			writeJSON(w, http.StatusTooManyRequests, errorBody{Error: errorDetail{Code: "QUOTA_STORE_UNAVAILABLE",
				Message:           "the shared quota store does not answer (on_store_error: reject); retry after " + itoa(secs) + "s",
				RetryAfterSeconds: secs, Source: "proxy"}})
			return
		}
		x.storeFailed = true
		s.log.Error("quota store failed", zap.String("key", x.id.fingerprint), zap.Error(se.err))
		s.writeError(w, x, http.StatusServiceUnavailable, "QUOTA_STORE_UNAVAILABLE", "the quota store did not answer; retry shortly")
		return
	}
	f := classifyFailure(err)
	if f.code == codeEgressDenied {
		x.decision = decisionDenied
	}
	s.writeError(w, x, f.status, f.code, f.message)
}

// shuttingDown answers a request that Shutdown stopped at its deadline:
// 503 with the time to its slot as Retry-After (at least 1s), so that a
// client retrying then does not overrun the quota the proxy was keeping.
func (s *Server) shuttingDown(w http.ResponseWriter, x *exchange) {
	x.decision = decisionShutdown
	x.err = errShuttingDown.Error()
	// The slot is in the store's time, the wall clock for the stores the
	// proxy runs with (the memory store's system clock, Redis's TIME).
	wait := time.Duration(0)
	for _, g := range x.gatePtrs {
		if g != nil {
			wait = max(wait, time.Until(g.res.At))
		}
	}
	secs := ceilSeconds(wait)
	msg := "the proxy is shutting down and stopped this request before the upstream answered it"
	if x.first.sentAt.Load() == 0 && x.attempts <= 1 {
		msg = "the proxy is shutting down and stopped this request before sending it"
	}
	w.Header().Set("Retry-After", itoa(secs))
	writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: errorDetail{
		Code: "PROXY_SHUTTING_DOWN", Message: msg + "; retry after " + itoa(secs) + "s", RetryAfterSeconds: secs, Source: "proxy",
	}})
	x.status = http.StatusServiceUnavailable
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

// jsonResponse builds a response the proxy answers itself.
func jsonResponse(status int, h http.Header, body any) *http.Response {
	data, _ := json.Marshal(body)
	data = append(data, '\n')
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(data)))
	return &http.Response{
		StatusCode:    status,
		Status:        strconv.Itoa(status) + " " + http.StatusText(status),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(bytes.NewReader(data)),
		ContentLength: int64(len(data)),
	}
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

// record builds the exchange's one Record and hands it to the observers
// (the log line first). It names the key by its fingerprint only, the path
// without its query, and cuts long paths and hosts (log.max_path_bytes).
func (s *Server) record(r *http.Request, x *exchange) {
	rec := decision.Record{
		Start:        x.start,
		Duration:     time.Since(x.start),
		Method:       r.Method,
		Host:         s.logged(r.URL.Host),
		Path:         s.logged(r.URL.Path),
		Decision:     x.decision,
		QueueWait:    x.wait,
		Status:       x.status,
		Attempts:     x.attempts,
		Throttles:    x.throttles,
		ThrottleRule: x.throttle,
		Error:        x.err,
		StoreFailed:  x.storeFailed,
	}
	if x.up != nil {
		rec.Upstream, rec.Key, rec.Identity, rec.StoreKey = x.up.name, x.id.fingerprint, x.id.rule, x.id.key
		if x.id.limits != nil {
			rec.Limits, rec.Enforced = x.id.limits.shown, x.id.limits.enforced()
		}
	}
	s.observers.Observe(rec)
}
