package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Row 8 of issue 12, quota evasion by spelling: the vendor's host with a
// trailing dot, or its address, was an unknown host (forwarded without
// limits); a credential sent twice was keyed on the first while both went
// upstream; a ';' in the query made a request anonymous. (The tunnel part
// of row 8 is in framing_test.go.)

// TestHostSpellingsAreOneUpstream: the host in any ASCII case, with or
// without a final dot, is the upstream, counted against one key, plain and
// through CONNECT; the upstream is sent the host as configured.
func TestHostSpellingsAreOneUpstream(t *testing.T) {
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			rec := newRecorder(t, sc.tls)
			p := startProxy(t, upstreamYAML(rec, "limits: [2/1h]\nmode: reject\n"))
			scheme, _, _ := strings.Cut(sc.prefix, "://")
			for i, host := range []string{"api.test", "api.test.", "API.Test.", "API.TEST"} {
				want := 200
				if i >= 2 {
					want = 429
				}
				code, body, _ := get(t, p.client(), fmt.Sprintf("%s://%s/%d", scheme, host, i), "k")
				if code != want {
					t.Errorf("%s: %d %s, want %d (one key, 2 per hour)", host, code, body, want)
				}
			}
			for _, h := range rec.all() {
				if h.host != "api.test" && h.host != "api.test:443" {
					t.Errorf("the upstream was sent Host %q", h.host)
				}
			}
		})
	}
}

// TestAnUpstreamsAddressIsNotAnotherHost: a request sent to the address
// where the proxy reaches an upstream (its connect_to) would reach it
// uncounted; it is refused with 421, plain and CONNECT. A tunnel to any
// other address whose TLS server name names an upstream is closed before
// a byte reaches the upstream. (A plain request cannot name the upstream
// in Host: for an absolute URL net/http takes the host from the URL, as
// RFC 9112 says, and the upstream is sent that.)
func TestAnUpstreamsAddressIsNotAnotherHost(t *testing.T) {
	rec := newRecorder(t, false)     // api.test's connect_to
	secure := newRecorder(t, true)   // secure.test's connect_to
	mirror := newRecorder(t, true)   // another address serving the vendor, no connect_to
	plainIP := newRecorder(t, false) // another address, plain HTTP
	p := startProxy(t, allowLoopback+fmt.Sprintf(`upstreams:
  - name: api
    hosts: [api.test, "other.test:%[3]s"]
    connect_to: %[1]s
    identity: [{header: apikey}]
    limits: [1/1h]
    mode: reject
  - name: secure
    hosts: [secure.test]
    connect_to: %[2]s
    identity: [{header: apikey}]
    limits: [1/1h]
    mode: reject
`, rec.addr(), secure.addr(), portOf(mirror.addr())))

	for _, target := range []string{"http://" + rec.addr() + "/direct", "CONNECT " + secure.addr(), "CONNECT " + rec.addr()} {
		resp, body := accessTry{target: target}.do(t, p)
		if resp.StatusCode != http.StatusMisdirectedRequest || errorCode(body) != "MISDIRECTED_REQUEST" {
			t.Errorf("%s: %d %s, want 421 MISDIRECTED_REQUEST", target, resp.StatusCode, body)
		}
	}

	// CONNECT to an address no upstream claims, with the TLS server name
	// of one (other.test on this port): closed before the upstream sees
	// a byte. A server name no upstream claims passes.
	for _, tt := range []struct {
		serverName string
		ok         bool
	}{{"other.test", false}, {"OTHER.test.", false}, {"api.test", true}, {"", true}} {
		c := dialRaw(t, p, "")
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", mirror.addr(), mirror.addr())
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT %s: %v %v", mirror.addr(), resp, err)
		}
		tc := tls.Client(c.Conn, &tls.Config{ServerName: tt.serverName, RootCAs: getPKI(t).pool, InsecureSkipVerify: tt.serverName == ""})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		err = tc.Handshake()
		if (err == nil) != tt.ok {
			t.Errorf("TLS with server name %q through a tunnel to %s: %v, want ok %v", tt.serverName, mirror.addr(), err, tt.ok)
		}
		if err == nil {
			fmt.Fprintf(tc, "GET /sni HTTP/1.1\r\nHost: %s\r\n\r\n", mirror.addr())
			if resp, err := http.ReadResponse(bufio.NewReader(tc), nil); err != nil || resp.StatusCode != 200 {
				t.Errorf("a request through the tunnel: %v %v", resp, err)
			}
		}
		tc.Close()
	}
	if n := len(mirror.all()); n != 2 {
		t.Errorf("the vendor's other address received %d requests, want the 2 whose server name names no upstream", n)
	}
	if !strings.Contains(p.logs.String(), `"msg":"tunnel refused"`) || !strings.Contains(p.logs.String(), `"server_name":"other.test"`) {
		t.Errorf("the refused tunnel is not logged:\n%s", p.logs)
	}

	// A plain request to another address with the upstream's Host: the
	// upstream is sent the address as Host, never api.test.
	c := dialRaw(t, p, "")
	fmt.Fprintf(c, "GET http://%s/by-address HTTP/1.1\r\nHost: api.test\r\napikey: k\r\n\r\n", plainIP.addr())
	if resp, body, err := c.read(http.MethodGet); err != nil || resp.StatusCode != 200 {
		t.Fatalf("plain request by address: %v %s %v", resp, body, err)
	}
	if hits := plainIP.all(); len(hits) != 1 || hits[0].host != plainIP.addr() {
		t.Errorf("the address was sent Host %q, want %q", hits[0].host, plainIP.addr())
	}
	if n := len(rec.all()) + len(secure.all()); n != 0 {
		t.Errorf("the upstreams received %d requests sent by address", n)
	}
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// TestAmbiguousCredentialsAreRefused: an identity rule that finds two
// different values refuses the request with 400 naming the rule, and so
// does a query the proxy cannot read as the upstream might; the same value
// twice is one credential.
func TestAmbiguousCredentialsAreRefused(t *testing.T) {
	rec := newRecorder(t, false)
	p := startProxy(t, fmt.Sprintf(`upstreams:
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}, {authorization: Bearer}, {query: access_token}]
    limits: [100/1s]
`, rec.addr()))
	const alpha, bravo = "tok-alpha-4f1d2c", "tok-bravo-9e8a7b"
	for _, tt := range []struct {
		name, query, headers, rule string // rule: "" for 200
	}{
		{"header twice", "", "apikey: " + alpha + "\r\napikey: " + bravo, "header:apikey"},
		{"header twice, one empty", "", "apikey: \r\napikey: " + bravo, "header:apikey"},
		{"header twice, the same", "", "apikey: " + alpha + "\r\napikey:  " + alpha, ""},
		{"Authorization twice", "", "Authorization: Bearer " + alpha + "\r\nAuthorization: Bearer " + bravo, "authorization:bearer"},
		{"the scheme twice in one field", "", "Authorization: Bearer " + alpha + ", Bearer " + bravo, "authorization:bearer"},
		{"another scheme beside", "", "Authorization: Bearer " + alpha + "\r\nAuthorization: Basic eDp5", ""},
		{"query parameter twice", "access_token=" + alpha + "&access_token=" + bravo, "", "query:access_token"},
		{"query parameter twice, one escaped", "acc%65ss_token=" + bravo + "&access_token=" + alpha, "", "query:access_token"},
		{"query parameter twice, the same", "access_token=" + alpha + "&access_token=" + alpha, "", ""},
		{"';' hides a second value", "x=1;access_token=" + bravo + "&access_token=" + alpha, "", "query:access_token"},
		{"';' inside the value", "access_token=" + alpha + ";" + bravo, "", "query:access_token"},
		{"';' elsewhere, one reading", "fields=a;b&access_token=" + alpha, "", ""},
		{"malformed escape in the value", "access_token=" + alpha + "%zz", "", "query:access_token"},
		{"malformed escape in the name", "access_token%=" + alpha + "&access_token=" + bravo, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(rec.all())
			c := dialRaw(t, p, "")
			path := "/x"
			if tt.query != "" {
				path += "?" + tt.query
			}
			head := ""
			if tt.headers != "" {
				head = tt.headers + "\r\n"
			}
			fmt.Fprintf(c, "GET http://api.test%s HTTP/1.1\r\nHost: api.test\r\n%s\r\n", path, head)
			resp, body, err := c.read(http.MethodGet)
			if err != nil {
				t.Fatal(err)
			}
			reached := len(rec.all()) - before
			if tt.rule == "" {
				if resp.StatusCode != 200 || reached != 1 {
					t.Errorf("%d %s (upstream saw %d), want 200", resp.StatusCode, body, reached)
				}
				return
			}
			if resp.StatusCode != 400 || errorCode(body) != "AMBIGUOUS_CREDENTIAL" || !strings.Contains(body, "identity rule "+tt.rule) {
				t.Errorf("%d %s, want 400 AMBIGUOUS_CREDENTIAL naming %s", resp.StatusCode, body, tt.rule)
			}
			if reached != 0 {
				t.Errorf("the upstream received the ambiguous request")
			}
			for _, cred := range []string{alpha, bravo} {
				if strings.Contains(body, cred) || strings.Contains(p.logs.String(), cred) {
					t.Errorf("the answer or the log carries the credential %q", cred)
				}
			}
		})
	}
}
