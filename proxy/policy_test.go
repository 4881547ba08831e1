package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
)

func compile(t *testing.T, yamlText string) *upstream {
	t.Helper()
	cfg, err := config.Parse("t.yaml", []byte(yamlText))
	if err != nil {
		t.Fatal(err)
	}
	u, err := compileUpstream(&cfg.Upstreams[0], "upstreams[0]")
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func fingerprint(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func request(rawURL string, header http.Header, remote string) *http.Request {
	u, _ := url.Parse(rawURL)
	if header == nil {
		header = http.Header{}
	}
	return &http.Request{Method: "GET", URL: u, Header: header, RemoteAddr: remote}
}

func TestIdentityRulesFirstMatchWinsAndCarryTheirLimits(t *testing.T) {
	u := compile(t, `upstreams:
  - name: engagor
    hosts: [api.engagor.com]
    identity:
      - query: access_token
      - query: oauth_token
      - authorization: Bearer
        limits: [7/1h]
      - header: X-API-Key
    limits: [350/1h]
    anonymous: {limits: [150/1h]}
    overrides:
      - prefix: cpk_
        limits: [100/1m]
      - prefix: cpk_test_
        limits: [5/1m]
      - fingerprint: `+fingerprint("console-token")[:12]+`
        limits: [20/1h]
`)
	tests := []struct {
		name      string
		req       *http.Request
		wantRule  string
		wantKey   string
		wantLimit string
	}{
		{"query token", request("https://api.engagor.com/x?access_token=tok1", nil, "10.0.0.1:5"),
			"query:access_token", "engagor/cred/" + fingerprint("tok1"), "350/1h"},
		{"second query parameter", request("https://api.engagor.com/x?oauth_token=tok1", nil, ""),
			"query:oauth_token", "engagor/cred/" + fingerprint("tok1"), "350/1h"},
		{"bearer shares the token's bucket, with the rule's limits", request("https://api.engagor.com/x", http.Header{"Authorization": {"Bearer tok1"}}, ""),
			"authorization:bearer", "engagor/cred/" + fingerprint("tok1"), "7/1h"},
		{"scheme is case-insensitive", request("https://api.engagor.com/x", http.Header{"Authorization": {"bearer  tok1 "}}, ""),
			"authorization:bearer", "engagor/cred/" + fingerprint("tok1"), "7/1h"},
		{"first rule wins", request("https://api.engagor.com/x?access_token=tokQ", http.Header{"Authorization": {"Bearer tokB"}}, ""),
			"query:access_token", "engagor/cred/" + fingerprint("tokQ"), "350/1h"},
		{"other scheme is not a match", request("https://api.engagor.com/x", http.Header{"Authorization": {"Basic dXNlcg=="}}, ""),
			"anonymous", "engagor/anonymous", "150/1h"},
		{"empty value is not a match", request("https://api.engagor.com/x?access_token=", http.Header{"X-Api-Key": {"  "}}, ""),
			"anonymous", "engagor/anonymous", "150/1h"},
		{"longest prefix wins", request("https://api.engagor.com/x", http.Header{"X-Api-Key": {"cpk_test_1"}}, ""),
			"header:x-api-key", "engagor/cred/" + fingerprint("cpk_test_1"), "5/1m"},
		{"prefix override", request("https://api.engagor.com/x", http.Header{"X-Api-Key": {"cpk_live_1"}}, ""),
			"header:x-api-key", "engagor/cred/" + fingerprint("cpk_live_1"), "100/1m"},
		{"fingerprint override wins over the rule's limits", request("https://api.engagor.com/x", http.Header{"Authorization": {"Bearer console-token"}}, ""),
			"authorization:bearer", "engagor/cred/" + fingerprint("console-token"), "20/1h"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := identifyOK(t, u, tt.req)
			if id.rule != tt.wantRule || id.key != tt.wantKey || id.limits.shown[0].String() != tt.wantLimit {
				t.Errorf("identify = rule %q key %q limits %v; want %q %q %s", id.rule, id.key, id.limits.shown, tt.wantRule, tt.wantKey, tt.wantLimit)
			}
			if id.rule != "anonymous" && id.fingerprint != id.key[len(id.key)-64:][:12] {
				t.Errorf("fingerprint %q is not the first 12 hex digits of the key", id.fingerprint)
			}
		})
	}
}

// identifyOK is identify for requests whose credential is not ambiguous.
func identifyOK(t *testing.T, u *upstream, r *http.Request) identity {
	t.Helper()
	id, err := u.identify(r)
	if err != nil {
		t.Fatalf("identify: %v", err)
	}
	return id
}

func TestSourceIPRuleKeysEachClientApart(t *testing.T) {
	u := compile(t, `upstreams:
  - name: local
    hosts: [a.test]
    identity: [{header: apikey}, {source_ip: true}]
    limits: [10/1s]
`)
	a := identifyOK(t, u, request("http://a.test/", nil, "10.0.0.1:1111"))
	b := identifyOK(t, u, request("http://a.test/", nil, "10.0.0.1:2222"))
	c := identifyOK(t, u, request("http://a.test/", nil, "10.0.0.2:1111"))
	if a.key != b.key || a.key == c.key || a.rule != "source_ip" {
		t.Errorf("source_ip keys: %q %q %q", a.key, b.key, c.key)
	}
	if k := identifyOK(t, u, request("http://a.test/", http.Header{"Apikey": {"10.0.0.1"}}, "10.0.0.1:1")); k.key == a.key {
		t.Errorf("a credential equal to an IP address shares the IP's bucket")
	}
}

// TestKeySecretKeysByAFullKeyedHash: with a key secret (a store shared by
// replicas) the key is the full HMAC-SHA256 of the credential, which
// nobody without the secret can compute from a guess (an IP address), while
// the logged fingerprint and fingerprint overrides stay SHA-256.
func TestKeySecretKeysByAFullKeyedHash(t *testing.T) {
	yamlText := `upstreams:
  - name: a
    hosts: [a.test]
    identity: [{header: apikey}, {source_ip: true}]
    limits: [10/1s]
    overrides:
      - fingerprint: ` + fingerprint("vip")[:12] + `
        limits: [99/1s]
`
	secret := []byte("0123456789abcdef-deployment-secret")
	u, other := compile(t, yamlText), compile(t, yamlText)
	u.keySecret, other.keySecret = secret, []byte("another deployment's secret....")
	mac := func(s string) string {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(s))
		return hex.EncodeToString(m.Sum(nil))
	}
	ip := identifyOK(t, u, request("http://a.test/", nil, "10.0.0.1:1111"))
	if ip.key != "a/ip/"+mac("10.0.0.1") || strings.Contains(ip.key, fingerprint("10.0.0.1")) {
		t.Errorf("source IP key %q, want a/ip/ + HMAC-SHA256 of the address under the secret", ip.key)
	}
	vip := identifyOK(t, u, request("http://a.test/", http.Header{"Apikey": {"vip"}}, ""))
	if vip.key != "a/cred/"+mac("vip") || vip.fingerprint != fingerprint("vip")[:12] || vip.limits.shown[0].Count != 99 {
		t.Errorf("credential: key %q fingerprint %q limits %v; want the HMAC key, the SHA-256 fingerprint and its override", vip.key, vip.fingerprint, vip.limits.shown)
	}
	if o := identifyOK(t, other, request("http://a.test/", http.Header{"Apikey": {"vip"}}, "")); o.key == vip.key {
		t.Error("two secrets gave one key")
	}
}

func TestEnforcedLimitsAreWidenedButShownAsConfigured(t *testing.T) {
	u := compile(t, `upstreams:
  - name: a
    hosts: [a.test]
    limits: [15/1s, 300/1m]
`)
	s := u.anonymous
	if s.shown[0].String() != "15/1s" || s.enforced()[0].Window.String() != "1.01s" || s.enforced()[1].Window.String() != "1m0.6s" {
		t.Errorf("shown %v enforced %v", s.shown, s.enforced())
	}
	if got, ok := s.shownFor(s.enforced()[1]); !ok || got.String() != "300/1m" {
		t.Errorf("shownFor(%v) = %v", s.enforced()[1], got)
	}
	if want := `"15/1s";q=15;w=1, "300/1m";q=300;w=60`; s.policy != want {
		t.Errorf("policy %q, want %q", s.policy, want)
	}
}

// TestRouterPortCounts: a host listed with a port claims that port only;
// a host listed without one claims its scheme's default port only (443
// for CONNECT and https, 80 for http), so that a client cannot reach a
// listed host's other ports as if they were its API.
func TestRouterPortCounts(t *testing.T) {
	a, b, v6 := &upstream{name: "a"}, &upstream{name: "b"}, &upstream{name: "v6"}
	rt := router{hosts: map[string]*upstream{"api.a.com": a, "api.b.com:8443": b, "127.0.0.1": a, "::1": v6, "[::2]:8443": v6}}
	for _, tt := range []struct {
		host, port string
		want       *upstream
	}{
		{"api.a.com", "443", a}, {"API.A.COM:443", "443", a}, {"api.a.com:443", "443", a},
		{"api.a.com", "80", a}, {"api.a.com:80", "80", a}, {"api.a.com:", "80", a},
		{"api.a.com:80", "443", nil}, {"api.a.com:443", "80", nil}, {"api.a.com:8443", "443", nil},
		{"api.b.com:8443", "443", b}, {"api.b.com:8443", "80", b}, {"api.b.com:443", "443", nil}, {"api.b.com", "443", nil},
		{"127.0.0.1:443", "443", a}, {"127.0.0.1:9000", "443", nil}, {"other.com:443", "443", nil},
		{"[::1]:443", "443", v6}, {"[::1]", "80", v6}, {"[::1]:22", "443", nil}, {"[::2]:8443", "443", v6},
	} {
		if got := rt.route(tt.host, tt.port); got != tt.want {
			t.Errorf("route(%q, default port %s) = %v, want %v", tt.host, tt.port, got, tt.want)
		}
	}
}

// TestMarginIsConfigsAndAQuarterOfTheWindowAtMost: the proxy widens a
// window exactly as config.Upstream.Margin says (check prints that), and
// never by more than a quarter of it, reported windows included.
func TestMarginIsConfigsAndAQuarterOfTheWindowAtMost(t *testing.T) {
	for _, m := range []time.Duration{0, time.Millisecond, 50 * time.Millisecond, 2 * time.Second} {
		u := &upstream{windowMargin: m}
		cu := config.Upstream{WindowMargin: config.Duration(m)}
		for _, w := range []time.Duration{time.Millisecond, 20 * time.Millisecond, 100 * time.Millisecond, time.Second, time.Minute, 24 * time.Hour} {
			got := u.margin(w)
			if want := cu.Margin(w); got != want {
				t.Errorf("margin %v, window %v: proxy %v, config %v", m, w, got, want)
			}
			if got > w/4 || got <= 0 {
				t.Errorf("margin %v, window %v: widened by %v", m, w, got)
			}
		}
	}
}
