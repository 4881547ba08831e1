package proxy

import (
	"net"
	"net/http"
	"strconv"
	"strings"
)

// Strict framing: what the proxy accepts of a client's request line and
// headers before anything is routed, and when it closes a connection
// rather than read the next request from it.

// connectTarget checks the authority of a CONNECT and returns it as
// host:port, the port 443 when it names none. It refuses an empty host,
// a host with spaces or control characters, and a port that is not a
// number from 1 to 65535.
func connectTarget(authority string) (string, bool) {
	host, port, err := net.SplitHostPort(authority)
	if err != nil {
		if strings.Contains(strings.Trim(authority, "[]"), ":") && !strings.HasPrefix(authority, "[") {
			return "", false // "a:b:c": not a host, not a host:port
		}
		host, port = strings.TrimSuffix(strings.TrimPrefix(authority, "["), "]"), "443"
	}
	if host == "" || !validPort(port) {
		return "", false
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c == 0x7f || strings.IndexByte("/?#@[]\\", c) >= 0 {
			return "", false
		}
	}
	return net.JoinHostPort(host, port), true
}

// validPort reports a port written as digits only, from 1 to 65535.
func validPort(port string) bool {
	if port == "" || len(port) > 5 {
		return false
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return false
		}
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 1 && n <= 65535
}

// sameAuthority reports whether host, the Host of a request inside an
// intercepted tunnel, names the tunnel's CONNECT target (host:port): the
// same host in any ASCII case, with or without a final dot, and the same
// port, a Host without a port naming 443. An empty Host (HTTP/1.0) names
// the target.
func sameAuthority(host, target string) bool {
	if host == "" {
		return true
	}
	th, tp, err := net.SplitHostPort(target)
	if err != nil {
		return false
	}
	hh, hp, err := net.SplitHostPort(host)
	if err != nil {
		hh, hp = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), "443"
	}
	return asciiEqualFold(strings.TrimSuffix(hh, "."), strings.TrimSuffix(th, ".")) && hp == tp
}

// asciiEqualFold is strings.EqualFold for ASCII letters only, as routing
// folds case: with Unicode folding, "\u017f.test" (a long s) would pass for
// "s.test" while routing elsewhere.
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// refuse answers with the proxy's JSON error and closes the connection
// after the answer: whatever the client sent after this request (bytes
// meant for a tunnel that was not opened, say) is never read as a new
// request.
func refuse(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Connection", "close")
	writeJSON(w, status, errorBody{Error: errorDetail{Code: code, Message: msg, Source: "proxy"}})
}

// headerSize measures a request's head as the bounds of config.Requests
// count it: the request line, and each header field (Host included) as
// "Name: value" plus CRLF.
func headerSize(r *http.Request) (bytes, fields int) {
	bytes = len(r.Method) + 1 + len(r.RequestURI) + 1 + len(r.Proto) + 2
	if r.Host != "" {
		bytes += len("Host: ") + len(r.Host) + 2
		fields++
	}
	for k, vv := range r.Header {
		for _, v := range vv {
			bytes += len(k) + 2 + len(v) + 2
		}
		fields += len(vv)
	}
	return bytes, fields
}

// logged cuts s to the configured log.max_path_bytes, marking the cut, so
// that a client cannot make one log line as long as its request.
func (s *Server) logged(v string) string {
	if len(v) <= s.maxLogged {
		return v
	}
	return v[:s.maxLogged] + "...(" + strconv.Itoa(len(v)) + " bytes)"
}
