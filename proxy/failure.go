package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
)

// Failure classes: what a client is told when the proxy could not get an
// answer. The body names the class and nothing else: the raw error (a
// dial error naming an address and a port, a lookup error naming the
// resolver) would make the proxy a port scanner and a map of the network
// behind it. The raw error goes to the request's log line only.
const (
	// UPSTREAM_UNREACHABLE: no connection could be made (refused, no
	// route, no such host) or it broke before an answer came.
	codeUnreachable = "UPSTREAM_UNREACHABLE"
	// UPSTREAM_TLS: a connection was made but TLS with the upstream
	// failed (an untrusted or mismatched certificate, a handshake alert).
	codeTLS = "UPSTREAM_TLS"
	// UPSTREAM_TIMEOUT: the upstream did not answer in time.
	codeTimeout = "UPSTREAM_TIMEOUT"
	// EGRESS_DENIED: the egress guard refused the destination, a host no
	// upstream claims that resolved to a loopback, private, link-local,
	// unique-local, unspecified, multicast, broadcast or reserved address,
	// or to one of the proxy's own listeners, not in egress.allow. The
	// message names the class, never the address.
	codeEgressDenied = "EGRESS_DENIED"
	// PROXY_LOOP: the destination is the proxy itself (see conns.go).
	codeLoop = "PROXY_LOOP"
)

// failure is one failure class as the client sees it.
type failure struct {
	status  int
	code    string
	message string
}

var (
	failUnreachable = failure{http.StatusBadGateway, codeUnreachable, "the upstream could not be reached"}
	failTLS         = failure{http.StatusBadGateway, codeTLS, "TLS with the upstream failed (its certificate is not trusted, or the handshake was refused)"}
	failTimeout     = failure{http.StatusGatewayTimeout, codeTimeout, "the upstream did not answer in time"}
	failLoop        = failure{http.StatusLoopDetected, codeLoop, "the destination is this proxy itself"}
)

// classifyFailure names the class of a failed attempt to reach an
// upstream. Timeouts come first: a TLS handshake that times out is a
// timeout.
func classifyFailure(err error) failure {
	var ee *egressError
	if errors.As(err, &ee) {
		return failure{http.StatusForbidden, codeEgressDenied,
			"the destination is " + classPhrase(ee.class) + ", which the proxy does not connect to for hosts without an upstream policy (its egress.allow can allow it)"}
	}
	if errors.Is(err, errProxyLoop) {
		return failLoop
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		return failTimeout
	}
	if isTLSFailure(err) {
		return failTLS
	}
	return failUnreachable
}

// isTLSFailure reports an error of the TLS layer with the upstream: its
// certificate, or the handshake.
func isTLSFailure(err error) bool {
	var verr *tls.CertificateVerificationError
	var uerr x509.UnknownAuthorityError
	var herr x509.HostnameError
	var cerr x509.CertificateInvalidError
	var rerr tls.RecordHeaderError
	var aerr tls.AlertError
	return errors.As(err, &verr) || errors.As(err, &uerr) || errors.As(err, &herr) ||
		errors.As(err, &cerr) || errors.As(err, &rerr) || errors.As(err, &aerr)
}
