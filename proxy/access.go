package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"go.uber.org/zap"
)

// Client access control: who may use the proxy and its admin endpoints.
// A client must come from one of the clients networks, when they are set,
// and present one of the client tokens, when they are set. The tokens are
// configured as their SHA-256 and compared in constant time; a token is
// never logged, and Proxy-Authorization, a hop-by-hop header, never
// reaches an upstream.

// clientAccess is the compiled clients and client_tokens.
type clientAccess struct {
	networks []netip.Prefix
	tokens   [][sha256.Size]byte
}

func compileClients(cfg *config.Config) clientAccess {
	var a clientAccess
	for _, p := range cfg.Clients {
		a.networks = append(a.networks, netip.Prefix(p))
	}
	for _, t := range cfg.ClientTokens {
		a.tokens = append(a.tokens, [sha256.Size]byte(t))
	}
	return a
}

// Why a client is refused.
type accessRefusal uint8

const (
	accessGranted  accessRefusal = iota
	accessNetwork                // its address is not in clients: 403
	accessNoToken                // no credentials: 407 (401 on admin)
	accessBadToken               // credentials that match no token: 407 (401 on admin)
)

func (r accessRefusal) String() string {
	switch r {
	case accessNetwork:
		return "client address not in clients"
	case accessNoToken:
		return "no client token"
	case accessBadToken:
		return "unknown client token"
	}
	return "granted"
}

// check judges a client by its address (r.RemoteAddr) and the
// credentials it sent (the values of Proxy-Authorization, or of
// Authorization on the admin endpoints).
func (a *clientAccess) check(remoteAddr string, credentials []string) accessRefusal {
	if len(a.networks) > 0 {
		ap, err := netip.ParseAddrPort(remoteAddr)
		if err != nil {
			return accessNetwork
		}
		ip, allowed := ap.Addr().WithZone("").Unmap(), false
		for _, p := range a.networks {
			if p.Contains(ip) {
				allowed = true
				break
			}
		}
		if !allowed {
			return accessNetwork
		}
	}
	if len(a.tokens) == 0 {
		return accessGranted
	}
	refusal := accessNoToken
	for _, c := range credentials {
		token, ok := clientToken(c)
		if !ok {
			continue
		}
		refusal = accessBadToken
		sum := sha256.Sum256([]byte(token))
		match := 0
		for i := range a.tokens {
			match |= subtle.ConstantTimeCompare(sum[:], a.tokens[i][:])
		}
		if match == 1 {
			return accessGranted
		}
	}
	return refusal
}

// clientToken reads the token of a credentials header: "Bearer TOKEN", or
// "Basic" with TOKEN as the password (the user name is ignored), or as
// the user name when the password is empty (a proxy URL such as
// http://TOKEN@proxy:8080).
func clientToken(v string) (string, bool) {
	scheme, rest, ok := strings.Cut(strings.TrimSpace(v), " ")
	rest = strings.TrimSpace(rest)
	if !ok || rest == "" {
		return "", false
	}
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		return rest, true
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return "", false
		}
		user, pass, _ := strings.Cut(string(raw), ":")
		if pass == "" {
			pass = user
		}
		return pass, pass != ""
	}
	return "", false
}

// admitClient checks the client of a request on the proxy listener and,
// when it is refused, answers 403 or 407 (with Proxy-Authenticate), closes
// the connection and logs the request once. Requests inside an intercepted
// tunnel were admitted with its CONNECT.
func (s *Server) admitClient(w http.ResponseWriter, r *http.Request) bool {
	if _, intercepted := r.Context().Value(interceptKey{}).(string); intercepted {
		return true
	}
	a := &s.policy.Load().clients
	if len(a.networks) == 0 && len(a.tokens) == 0 {
		return true
	}
	start := time.Now()
	refusal := a.check(r.RemoteAddr, r.Header["Proxy-Authorization"])
	if refusal == accessGranted {
		return true
	}
	status, code, msg := http.StatusForbidden, "CLIENT_NOT_ALLOWED", "this client's address may not use the proxy"
	if refusal != accessNetwork {
		status, code, msg = http.StatusProxyAuthRequired, "PROXY_AUTH_REQUIRED",
			"the proxy needs a client token: Proxy-Authorization: Bearer TOKEN, or Basic with the token as the password"
		w.Header()["Proxy-Authenticate"] = []string{`Basic realm="ratelimit-proxy"`, `Bearer realm="ratelimit-proxy"`}
	}
	refuse(w, status, code, msg)
	why := refusal.String() + " (client " + r.RemoteAddr + ")"
	if r.Method == http.MethodConnect {
		s.observers.Observe(decision.Record{Start: start, Duration: time.Since(start), Method: http.MethodConnect,
			Host: s.logged(r.Host), Decision: decisionDenied, Status: status, Error: why})
		return false
	}
	s.record(r, &exchange{start: start, decision: decisionDenied, status: status, err: why})
	return false
}

// GuardAdmin applies the client access rules to the admin endpoints h:
// a client outside clients is answered 403; without one of the
// client_tokens (in Authorization: Bearer TOKEN, or Basic with the token
// as the password), 401 with WWW-Authenticate. GET /healthz and /readyz
// need no token, so that container and load-balancer probes need no
// secret: they say "ok" and nothing more. The rules are the running
// configuration's: a reload applies to the admin endpoints too.
func (s *Server) GuardAdmin(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := s.policy.Load().clients
		if (r.URL.Path == "/healthz" || r.URL.Path == "/readyz") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			a.tokens = nil
		}
		refusal := a.check(r.RemoteAddr, r.Header["Authorization"])
		if refusal == accessGranted {
			h.ServeHTTP(w, r)
			return
		}
		status, code, msg := http.StatusForbidden, "CLIENT_NOT_ALLOWED", "this client's address may not use the admin endpoints"
		if refusal != accessNetwork {
			status, code, msg = http.StatusUnauthorized, "AUTH_REQUIRED",
				"the admin endpoints need a client token: Authorization: Bearer TOKEN, or Basic with the token as the password"
			w.Header()["Www-Authenticate"] = []string{`Basic realm="ratelimit-proxy"`, `Bearer realm="ratelimit-proxy"`}
		}
		s.log.Info("admin request refused", zap.String("method", r.Method), zap.String("path", s.logged(r.URL.Path)),
			zap.Int("status", status), zap.String("client", r.RemoteAddr), zap.String("error", refusal.String()))
		refuse(w, status, code, msg)
	})
}
