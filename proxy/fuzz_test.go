package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
	"github.com/ratelimit-proxy/ratelimit-proxy/signals"
)

// Fuzz targets for every parser of client input in this package: CONNECT
// targets and routing, the Host check inside tunnels, identity extraction,
// hop-by-hop header handling, and the read-ahead of response bodies. Each
// asserts properties, not only "does not panic". Their corpora are in
// testdata/fuzz.

// asciiUpper upper-cases ASCII letters only.
func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// fuzzRouter claims bare hosts, a host:port and IP literals of both kinds.
func fuzzRouter() (*router, []*upstream) {
	a, b, c := &upstream{name: "a"}, &upstream{name: "b"}, &upstream{name: "c"}
	return &router{hosts: map[string]*upstream{
		"api.a.com": a, "s.test": a, "api.b.com:8443": b, "127.0.0.1": c, "::1": c, "[::2]:8443": c,
	}}, []*upstream{a, b, c}
}

func FuzzRoute(f *testing.F) {
	for _, s := range []string{
		"api.a.com", "api.a.com:443", "API.A.COM:80", "api.a.com:", "api.a.com.:443", "api.b.com:8443",
		"api.b.com", "127.0.0.1:9000", "[::1]", "[::1]:443", "::1", "[::2]:8443", "[::ffff:127.0.0.1]:443",
		"a:b:c", "[", "]:80", ":443", "api.a.com:0443", "api.a.com:+443", "\u017f.test", "s.test:443",
		"a b.test:443", "a\tb:443", "evil/x:443", "u@h:443", "[a]b:443", "h:65536", "h:0",
	} {
		f.Add(s, s, true)
	}
	f.Add("\u017f.test", "s.test:443", true) // Unicode folding: "ſ" is not "s"
	f.Add("api.a.com", "api.a.com:443", false)
	f.Add("API.A.COM.:443", "api.a.com.", true)
	rt, ups := fuzzRouter()
	f.Fuzz(func(t *testing.T, hostport, host string, https bool) {
		port := "80"
		if https {
			port = "443"
		}
		got := rt.route(hostport, port)
		if got != nil && !slices.Contains(ups, got) {
			t.Fatalf("route(%q) = %p, not an upstream", hostport, got)
		}
		if again := rt.route(asciiUpper(hostport), port); again != got {
			t.Errorf("route is not case-insensitive: %q -> %v, %q -> %v", hostport, got, asciiUpper(hostport), again)
		}
		// A bare host is claimed on the default port only: whatever
		// matched a hostport with another port is listed with that port.
		if h, p, err := net.SplitHostPort(strings.ToLower(hostport)); err == nil && got != nil && p != "" && p != port {
			if rt.hosts[net.JoinHostPort(h, p)] != got {
				t.Errorf("route(%q, default %s) = %s: a host listed without port %s matched it", hostport, port, got.name, p)
			}
		}
		// A final dot on the host changes nothing: "api.a.com." is api.a.com.
		if h, p, err := net.SplitHostPort(hostport); err == nil && h != "" && !strings.HasSuffix(h, ".") && !strings.Contains(h, ":") {
			if dotted := rt.route(net.JoinHostPort(h+".", p), port); dotted != got {
				t.Errorf("route(%q) = %v but with a final dot %v", hostport, got, dotted)
			}
		}
		// Naming the default port changes nothing.
		if !strings.Contains(hostport, ":") && !strings.ContainsAny(hostport, "[]") {
			if with := rt.route(net.JoinHostPort(hostport, port), port); with != got {
				t.Errorf("route(%q) = %v but route with :%s = %v", hostport, got, port, with)
			}
		}

		// CONNECT targets: what is accepted is a clean host:port, and
		// accepting it again changes nothing.
		target, ok := connectTarget(hostport)
		if ok {
			h, p, err := net.SplitHostPort(target)
			if err != nil || h == "" || !validPort(p) {
				t.Fatalf("connectTarget(%q) = %q: not host:port (%v)", hostport, target, err)
			}
			if strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r == 0x7f || strings.ContainsRune("/?#@[]\\", r) }) {
				t.Errorf("connectTarget(%q) accepted host %q", hostport, h)
			}
			if again, ok := connectTarget(target); !ok || again != target {
				t.Errorf("connectTarget is not idempotent: %q -> %q -> %q %v", hostport, target, again, ok)
			}
			// The Host check inside a tunnel: a Host it lets through
			// routes exactly as the tunnel's target does.
			if sameAuthority(host, target) && host != "" {
				if rt.route(host, "443") != rt.route(target, "443") {
					t.Errorf("Host %q passes the check for target %q but routes elsewhere", host, target)
				}
			}
			if !sameAuthority(target, target) {
				t.Errorf("target %q does not name itself", target)
			}
		}
	})
}

var keyRE = regexp.MustCompile(`^api/(anonymous|(cred|ip)/[0-9a-f]{64})$`)

// FuzzIdentify reads apikey and authorization as header fields, one per
// line, so that a field sent twice is fuzzed too.
func FuzzIdentify(f *testing.F) {
	f.Add("sk_live_0123456789abcdef", "", "", "10.0.0.1:5")
	f.Add("", "Bearer tok_0123456789abcdef", "", "")
	f.Add("", "bearer   spaced token  ", "access_token=a&b=c", "")
	f.Add("", "Basic dXNlcjpwYXNz", "access_token=q_0123456789abcdef", "[::1]:80")
	f.Add("  ", "Bearer", "access_token=&access_token=x", "no port")
	f.Add("", "", "access_token=%zz;x=1", "10.0.0.2:1")
	f.Add("cpk_live_1", "", "", "")
	f.Add("a\nb", "", "", "")
	f.Add("a\n a ", "Bearer x\nBearer y", "", "")
	f.Add("", "Bearer x, Bearer y", "", "")
	f.Add("", "AWS4-HMAC-SHA256 Credential=a, Signature=b", "access_token=A&access_token=A", "")
	f.Add("", "", "x=1;access_token=B&access_token=A", "")
	f.Add("", "", "acc%65ss_token=A&access_token=B", "")
	u := compileForFuzz(f)
	f.Fuzz(func(t *testing.T, apikey, authorization, query, remote string) {
		h := http.Header{}
		if apikey != "" {
			h["Apikey"] = strings.Split(apikey, "\n")
		}
		if authorization != "" {
			h["Authorization"] = strings.Split(authorization, "\n")
		}
		r := &http.Request{Method: "GET", URL: &url.URL{Scheme: "https", Host: "api.test", Path: "/", RawQuery: query}, Header: h, RemoteAddr: remote}
		id, err := u.identify(r)
		if again, err2 := u.identify(r); again != id || (err == nil) != (err2 == nil) {
			t.Errorf("identify is not deterministic: %+v %v then %+v %v", id, err, again, err2)
		}
		// What a reader that trusts no rule's parsing sees: the header's
		// distinct values, and the query parameter's as net/url reads it.
		distinct := func(vs []string) []string {
			var out []string
			for _, v := range vs {
				if v = strings.TrimSpace(v); !slices.Contains(out, v) {
					out = append(out, v)
				}
			}
			return out
		}
		keyOf := func(cred string) string { return "api/cred/" + fingerprintOf(cred) }
		apikeys := distinct(h["Apikey"])
		if err != nil {
			var ce *credentialError
			if !errors.As(err, &ce) || err.Error() != "identity rule "+ce.rule+" "+ce.why ||
				!slices.Contains([]string{whyTwoValues, whySemicolon, whyEscape}, ce.why) {
				t.Fatalf("identify refused with %v: not a credentialError naming its rule", err)
			}
			if ce.rule == "header:apikey" && len(apikeys) < 2 {
				t.Errorf("header rule refused %q, which holds one value", h["Apikey"])
			}
			return
		}
		if len(apikeys) > 1 {
			t.Fatalf("apikey sent as %q, two values: keyed %s, want a refusal", h["Apikey"], id.rule)
		}
		if len(apikeys) == 1 && apikeys[0] != "" && (id.rule != "header:apikey" || id.key != keyOf(apikeys[0])) {
			t.Errorf("apikey %q: keyed %s %s", apikeys[0], id.rule, id.key)
		}
		if !keyRE.MatchString(id.key) {
			t.Fatalf("key %q", id.key)
		}
		if id.limits == nil {
			t.Fatalf("no limits for %q", id.rule)
		}
		switch id.rule {
		case "anonymous":
			if id.key != "api/anonymous" || id.fingerprint != "anonymous" {
				t.Errorf("anonymous: key %q fingerprint %q", id.key, id.fingerprint)
			}
		case "header:apikey", "authorization:bearer", "query:access_token", "source_ip":
			if id.fingerprint != id.key[len(id.key)-64:][:12] {
				t.Errorf("fingerprint %q is not the key's first 12 hex digits (%q)", id.fingerprint, id.key)
			}
		default:
			t.Fatalf("rule %q", id.rule)
		}
		// The query rule, when reached, agrees with net/url on a query
		// net/url reads without error: one value keys, two are refused.
		if reached := id.rule == "query:access_token" || id.rule == "source_ip" || id.rule == "anonymous"; reached && !strings.Contains(query, ";") {
			if q, perr := url.ParseQuery(query); perr == nil {
				vals := distinct(q["access_token"])
				switch {
				case len(vals) > 1:
					t.Errorf("query %q holds access_token %q: keyed %s, want a refusal", query, vals, id.rule)
				case len(vals) == 1 && vals[0] != "" && (id.rule != "query:access_token" || id.key != keyOf(vals[0])):
					t.Errorf("query %q: keyed %s %s, want access_token %q", query, id.rule, id.key, vals[0])
				case (len(vals) == 0 || vals[0] == "") && id.rule == "query:access_token":
					t.Errorf("query %q holds no access_token, keyed on one", query)
				}
			}
		}
		// No credential in the key: a value that is not itself hex never
		// appears in it.
		for _, v := range []string{apikey, authorization, query} {
			if v = strings.TrimSpace(v); len(v) >= 8 && strings.Trim(v, "0123456789abcdef") != "" && strings.Contains(id.key, v) {
				t.Errorf("the key %q carries the input %q", id.key, v)
			}
		}
		// One credential, one bucket, however it is sent.
		if id.rule == "header:apikey" {
			cred := apikeys[0]
			byBearer, err := u.identify(&http.Request{URL: &url.URL{}, Header: http.Header{"Authorization": {"Bearer " + cred}}})
			if err == nil && byBearer.key != id.key {
				t.Errorf("credential %q: key %q by header, %q by Bearer", cred, id.key, byBearer.key)
			}
			if err != nil && !strings.Contains(strings.ToLower(cred), "bearer") {
				t.Errorf("credential %q by Bearer: %v", cred, err)
			}
		}
	})
}

// fingerprintOf is the hex SHA-256 of a credential, as keys hold it.
func fingerprintOf(cred string) string {
	sum := sha256.Sum256([]byte(cred))
	return hex.EncodeToString(sum[:])
}

// compileForFuzz is the upstream FuzzIdentify keys requests for.
func compileForFuzz(tb testing.TB) *upstream {
	tb.Helper()
	cfgText := `upstreams:
  - name: api
    hosts: [api.test]
    identity:
      - header: apikey
      - authorization: Bearer
      - query: access_token
      - source_ip: true
    limits: [10/1s]
    overrides: [{prefix: cpk_, limits: [5/1s]}]
`
	cfg, err := config.Parse("fuzz.yaml", []byte(cfgText))
	if err != nil {
		tb.Fatal(err)
	}
	u, err := compileUpstream(&cfg.Upstreams[0], "upstreams[0]")
	if err != nil {
		tb.Fatal(err)
	}
	return u
}

// FuzzClientAccess: the client access check grants a request only when
// it carries a configured token, read from Bearer or from Basic's
// password (or its user name when the password is empty), and only from
// a configured network.
func FuzzClientAccess(f *testing.F) {
	f.Add("Bearer t0ken", "10.1.2.3:5")
	f.Add("Basic YXBwOnQwa2Vu", "10.1.2.3:5") // app:t0ken
	f.Add("Basic dDBrZW46", "[::1]:80")       // t0ken:
	f.Add("basic  YXBwOnQwa2Vu ", "10.1.2.3:5")
	f.Add("Bearer t0ken\nBearer wrong", "10.0.0.1:1")
	f.Add("Digest t0ken", "192.168.1.1:1")
	f.Add("Basic !!", "no port")
	sum := sha256.Sum256([]byte("t0ken"))
	a := &clientAccess{networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, tokens: [][sha256.Size]byte{sum}}
	f.Fuzz(func(t *testing.T, header, remote string) {
		values := strings.Split(header, "\n")
		got := a.check(remote, values)
		ap, err := netip.ParseAddrPort(remote)
		inNet := err == nil && a.networks[0].Contains(ap.Addr().Unmap())
		if !inNet {
			if got != accessNetwork {
				t.Fatalf("client %q outside the networks: %v", remote, got)
			}
			return
		}
		holds := false
		for _, v := range values {
			if tok, ok := clientToken(v); ok {
				if tok == "" {
					t.Errorf("clientToken(%q) read an empty token", v)
				}
				holds = holds || tok == "t0ken"
			}
		}
		if (got == accessGranted) != holds {
			t.Errorf("check(%q, %q) = %v, but the header holds the token: %v", remote, values, got, holds)
		}
	})
}

func FuzzHopHeaders(f *testing.F) {
	for _, s := range []string{
		"Connection: X-Hop, keep-alive\nX-Hop: secret\nKeep-Alive: timeout=5\nX-End: kept",
		"Te: trailers, deflate\nConnection: TE",
		"Te: deflate\nTrailer: X-Sum\nTransfer-Encoding: chunked\nUpgrade: websocket\nConnection: Upgrade",
		"Proxy-Authorization: Basic c2VjcmV0\nProxy-Connection: keep-alive\nProxy-Authenticate: Basic",
		"Connection: ,, apikey ,\napikey: k\nUser-Agent: curl/8",
		"Connection: close\nConnection: X-A\nX-A: 1\nX-B: 2",
		"connection: x-lower\nx-lower: 1",
	} {
		f.Add(s)
	}
	hop := map[string]bool{}
	for _, k := range hopHeaders {
		hop[k] = true
	}
	f.Fuzz(func(t *testing.T, block string) {
		h := http.Header{}
		for _, line := range strings.Split(block, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				h.Add(k, strings.TrimSpace(v)) // canonical keys, as net/http's server gives them
			}
		}
		before := h.Clone()
		named := map[string]bool{}
		for _, v := range before["Connection"] {
			for _, n := range strings.Split(v, ",") {
				if n = textprotoTrim(n); n != "" {
					named[http.CanonicalHeaderKey(n)] = true
				}
			}
		}
		out := outgoingHeader(h)

		// The client's map is left as it was, but for an empty
		// User-Agent added when it had none.
		if _, had := before["User-Agent"]; !had {
			if ua := h["User-Agent"]; len(ua) != 1 || ua[0] != "" {
				t.Errorf("User-Agent %q added, want one empty value", ua)
			}
			delete(h, "User-Agent")
		}
		if !maps.EqualFunc(h, before, slices.Equal) {
			t.Errorf("outgoingHeader changed its input:\n%v\nwas\n%v", h, before)
		}
		for k, vv := range out {
			switch {
			case k == "Te":
				if !slices.Equal(vv, []string{"trailers"}) || !hasToken(before["Te"], "trailers") {
					t.Errorf("Te %q went upstream (from %q)", vv, before["Te"])
				}
			case hop[k]:
				t.Errorf("hop-by-hop %s: %q went upstream", k, vv)
			case named[k]:
				t.Errorf("%s, named by Connection, went upstream", k)
			}
		}
		for k, vv := range before {
			if !hop[k] && !named[k] && !slices.Equal(out[k], vv) {
				t.Errorf("end-to-end %s: %q went upstream as %q", k, vv, out[k])
			}
		}

		// The response direction: removeHopHeaders leaves no hop-by-hop
		// header and nothing Connection named.
		resp := before.Clone()
		removeHopHeaders(resp)
		for k := range resp {
			if hop[k] || named[k] {
				t.Errorf("response kept %s", k)
			}
		}
	})
}

// textprotoTrim is textproto.TrimString: ASCII space and tab, both ends.
func textprotoTrim(s string) string { return strings.Trim(s, " \t") }

func FuzzSmallJSON(f *testing.F) {
	f.Add("application/json", int64(20), []byte(`{"status":{"code":11005}}`), uint8(0))
	f.Add("application/problem+json; charset=utf-8", int64(0), []byte{}, uint8(0))
	f.Add("Application/JSON ", int64(signals.MaxBody), []byte("x"), uint8(64))
	f.Add("text/event-stream", int64(-1), []byte("data: 1\n\n"), uint8(0))
	f.Add("application/json", int64(signals.MaxBody+1), []byte("y"), uint8(65))
	f.Add(";application/json", int64(5), []byte("{}"), uint8(1))
	f.Fuzz(func(t *testing.T, contentType string, length int64, body []byte, extraKiB uint8) {
		// extraKiB grows the body past what the fuzzer would write itself,
		// so that bodies longer than what is peeked are explored too.
		body = append(body, bytes.Repeat([]byte{'z'}, int(extraKiB)<<10)...)
		resp := &http.Response{Header: http.Header{"Content-Type": {contentType}}, ContentLength: length}
		small := smallJSON(resp)
		if small && (length < 0 || length > signals.MaxBody) {
			t.Errorf("smallJSON with Content-Length %d", length)
		}
		if small {
			mt, _, _ := strings.Cut(contentType, ";")
			mt = strings.ToLower(strings.TrimSpace(mt))
			if mt != "application/json" && !strings.HasSuffix(mt, "+json") {
				t.Errorf("smallJSON for media type %q", mt)
			}
		}
		// The media type's case and any parameters do not matter.
		for _, ct := range []string{asciiUpper(contentType), contentType + ";charset=utf-8"} {
			if got := smallJSON(&http.Response{Header: http.Header{"Content-Type": {ct}}, ContentLength: length}); got != small {
				t.Errorf("smallJSON(%q) = %v but smallJSON(%q) = %v", contentType, small, ct, got)
			}
		}

		// peekBody gives the first MaxBody bytes and leaves the body whole.
		resp.Body = io.NopCloser(bytes.NewReader(body))
		peeked := peekBody(resp)
		if want := body[:min(len(body), signals.MaxBody)]; !bytes.Equal(peeked, want) {
			t.Errorf("peeked %d bytes, want the first %d", len(peeked), len(want))
		}
		if all, err := io.ReadAll(resp.Body); err != nil || !bytes.Equal(all, body) {
			t.Errorf("after the peek the body reads %d bytes (%v), want %d", len(all), err, len(body))
		}
		// A body that fails keeps its error after the peeked bytes.
		boom := errors.New("boom")
		resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), errReader{boom}))
		peekBody(resp)
		if all, err := io.ReadAll(resp.Body); !errors.Is(err, boom) || !bytes.Equal(all, body) {
			t.Errorf("failing body: read %d of %d bytes, error %v", len(all), len(body), err)
		}
	})
}
