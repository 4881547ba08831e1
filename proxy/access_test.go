package proxy_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// Row 1 of issue 12 also found no client authentication: anyone who could
// reach the proxy could use it. With clients or client_tokens set, every
// path (plain, CONNECT, admin) refuses other clients.

const clientToken = "rlp-client-token-7c1f2e"

func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// accessTry is one request to the proxy with given credentials.
type accessTry struct {
	name   string
	target string // an absolute URL, or "CONNECT host:port"
	auth   string // Proxy-Authorization
	status int
	code   string
}

func (tt accessTry) do(t *testing.T, p *running) (*http.Response, string) {
	t.Helper()
	c := dialRaw(t, p, "")
	head := ""
	if tt.auth != "" {
		head = "Proxy-Authorization: " + tt.auth + "\r\n"
	}
	method := http.MethodGet
	if target, ok := strings.CutPrefix(tt.target, "CONNECT "); ok {
		method = http.MethodConnect
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", target, target, head)
	} else {
		u, _ := url.Parse(tt.target)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\napikey: k\r\n%s\r\n", tt.target, u.Host, head)
	}
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s: %v", tt.target, err)
	}
	if method == http.MethodConnect && resp.StatusCode == 200 {
		return resp, ""
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// adminStub stands for the admin endpoints (package admin) behind
// GuardAdmin.
var adminStub = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "admin "+r.URL.Path) })

func TestClientTokensGuardEveryPath(t *testing.T) {
	rec := newRecorder(t, false)
	p := startProxy(t, fmt.Sprintf("client_tokens: [%s]\n", tokenHash(clientToken))+upstreamYAML(rec, ""))
	for _, tt := range []accessTry{
		{"plain, no credentials", "http://api.test/a", "", 407, "PROXY_AUTH_REQUIRED"},
		{"plain, wrong token", "http://api.test/a", "Bearer wrong", 407, "PROXY_AUTH_REQUIRED"},
		{"plain, the token's hash", "http://api.test/a", "Bearer " + tokenHash(clientToken), 407, "PROXY_AUTH_REQUIRED"},
		{"plain, unknown scheme", "http://api.test/a", "Digest " + clientToken, 407, "PROXY_AUTH_REQUIRED"},
		{"CONNECT, no credentials", "CONNECT api.test:443", "", 407, "PROXY_AUTH_REQUIRED"},
		{"CONNECT, wrong password", "CONNECT api.test:443", basic("me", "wrong"), 407, "PROXY_AUTH_REQUIRED"},
		{"plain, Bearer", "http://api.test/bearer", "Bearer " + clientToken, 200, ""},
		{"plain, Basic password", "http://api.test/basic", basic("anyone", clientToken), 200, ""},
		{"plain, Basic user name alone", "http://api.test/user", basic(clientToken, ""), 200, ""},
		{"CONNECT, Bearer", "CONNECT api.test:443", "bearer " + clientToken, 200, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := tt.do(t, p)
			if resp.StatusCode != tt.status || tt.code != "" && errorCode(body) != tt.code {
				t.Fatalf("%d %s, want %d %s", resp.StatusCode, body, tt.status, tt.code)
			}
			if tt.status == 407 {
				if got := resp.Header.Values("Proxy-Authenticate"); len(got) != 2 || !strings.HasPrefix(got[0], "Basic ") || !strings.HasPrefix(got[1], "Bearer ") {
					t.Errorf("Proxy-Authenticate %q, want Basic and Bearer challenges", got)
				}
				if !resp.Close {
					t.Error("the connection stays open after a 407")
				}
			}
		})
	}
	// A Go client with the token in its proxy URL.
	u := *p.url
	u.User = url.UserPassword("app", clientToken)
	c := p.client()
	c.Transport.(*http.Transport).Proxy = http.ProxyURL(&u)
	if code, body, _ := get(t, c, "http://api.test/go-client", "k"); code != 200 {
		t.Errorf("through the proxy with the token in its URL: %d %s", code, body)
	}
	for _, h := range rec.all() {
		if v := h.header.Get("Proxy-Authorization"); v != "" {
			t.Errorf("Proxy-Authorization reached the upstream: %q", v)
		}
	}
	if n := len(rec.all()); n != 4 {
		t.Errorf("the upstream saw %d requests, want the 4 with the token", n)
	}
	logs := p.logs.String()
	for _, secret := range []string{clientToken, base64.StdEncoding.EncodeToString([]byte("anyone:" + clientToken)), "wrong"} {
		if strings.Contains(logs, secret) {
			t.Errorf("a credential (%q) is in the log:\n%s", secret, logs)
		}
	}
	if !strings.Contains(logs, `"status":407`) || !strings.Contains(logs, "no client token") || !strings.Contains(logs, "unknown client token") {
		t.Errorf("refusals are not logged with their reason:\n%s", logs)
	}
}

func TestClientsNetworksGuardEveryPath(t *testing.T) {
	rec, svc := newRecorder(t, false), newRecorder(t, false)
	for _, tt := range []struct {
		clients string
		status  int
	}{
		{"[10.0.0.0/8, 192.168.0.0/16, 'fd00::/8']", 403},
		{"[10.0.0.0/8, 127.0.0.1]", 200},
	} {
		t.Run(tt.clients, func(t *testing.T) {
			p := startProxy(t, "clients: "+tt.clients+"\n"+allowLoopback+upstreamYAML(rec, ""))
			for _, target := range []string{"http://api.test/a", "CONNECT api.test:443", "http://" + svc.addr() + "/unknown"} {
				resp, body := accessTry{target: target}.do(t, p)
				if resp.StatusCode != tt.status || tt.status == 403 && errorCode(body) != "CLIENT_NOT_ALLOWED" {
					t.Errorf("%s from 127.0.0.1: %d %s, want %d", target, resp.StatusCode, body, tt.status)
				}
			}
			admin := httptest.NewServer(p.srv.GuardAdmin(adminStub))
			defer admin.Close()
			for _, path := range []string{"/healthz", "/ca.pem"} {
				if code, body, _ := get(t, http.DefaultClient, admin.URL+path, ""); code != tt.status {
					t.Errorf("admin %s from 127.0.0.1: %d %s, want %d", path, code, body, tt.status)
				}
			}
		})
	}
}

func TestAdminEndpointsNeedTheToken(t *testing.T) {
	p := startProxy(t, fmt.Sprintf("client_tokens: [%s]\nupstreams: []\n", tokenHash(clientToken)))
	admin := httptest.NewServer(p.srv.GuardAdmin(adminStub))
	defer admin.Close()
	for _, tt := range []struct {
		path, auth string
		status     int
	}{
		{"/ca.pem", "", 401},
		{"/ca.pem", "Bearer wrong", 401},
		{"/ca.pem", "Bearer " + clientToken, 200},
		{"/ca.pem", basic("ops", clientToken), 200},
		{"/healthz", "", 200}, // says "ok" and nothing more: probes need no secret
	} {
		req, _ := http.NewRequest(http.MethodGet, admin.URL+tt.path, nil)
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("%s with %q: %d, want %d", tt.path, tt.auth, resp.StatusCode, tt.status)
		}
		if resp.StatusCode == 401 && len(resp.Header.Values("Www-Authenticate")) != 2 {
			t.Errorf("401 without WWW-Authenticate challenges: %v", resp.Header)
		}
	}
	if strings.Contains(p.logs.String(), clientToken) {
		t.Errorf("the token is in the log:\n%s", p.logs)
	}
}
