package proxy_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// startOrigin runs h as an upstream over plain HTTP or TLS (signed by the
// test CA, which the proxy trusts) until the test ends.
func startOrigin(t *testing.T, useTLS bool, h http.Handler) *httptest.Server {
	t.Helper()
	up := httptest.NewUnstartedServer(h)
	if useTLS {
		up.TLS = &tls.Config{Certificates: []tls.Certificate{getPKI(t).server}}
		up.StartTLS()
	} else {
		up.Start()
	}
	t.Cleanup(up.Close)
	return up
}

// startUpstream runs h with startOrigin and returns a proxy routing
// api.test to it with an apikey identity.
func startUpstream(t *testing.T, useTLS bool, h http.Handler) *running {
	t.Helper()
	up := startOrigin(t, useTLS, h)
	return startProxy(t, fmt.Sprintf("upstreams:\n  - name: api\n    hosts: [api.test]\n    connect_to: %s\n    identity: [{header: apikey}]\n    limits: [100/1s]\n", up.Listener.Addr()))
}

func TestHopByHopHeadersStayOnTheirHop(t *testing.T) {
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			seen := make(chan http.Header, 1)
			p := startUpstream(t, sc.tls, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen <- r.Header.Clone()
				w.Header().Set("Connection", "X-Upstream-Hop")
				w.Header().Set("X-Upstream-Hop", "secret")
				w.Header().Set("Keep-Alive", "timeout=5")
				w.Header().Set("X-End-To-End", "kept")
			}))
			req, _ := http.NewRequest(http.MethodGet, sc.prefix+"/h", nil)
			req.Header.Set("apikey", "k1")
			req.Header.Set("Connection", "X-Client-Hop")
			req.Header.Set("X-Client-Hop", "secret")
			req.Header.Set("Keep-Alive", "timeout=5")
			req.Header.Set("Te", "trailers, deflate")
			req.Header.Set("X-Custom", "kept")
			resp, err := p.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			h := <-seen
			for _, k := range []string{"X-Client-Hop", "Keep-Alive"} {
				if v := h.Get(k); v != "" {
					t.Errorf("upstream got hop-by-hop %s: %q", k, v)
				}
			}
			if h.Get("X-Custom") != "kept" || h.Get("apikey") != "k1" {
				t.Errorf("end-to-end request headers lost: %v", h)
			}
			if h.Get("Te") != "trailers" {
				t.Errorf("upstream got TE %q, want exactly \"trailers\"", h.Get("Te"))
			}
			if ua, ok := h["User-Agent"]; sc.name == "http" && ok && ua[0] != "Go-http-client/1.1" {
				// The client's own User-Agent passes; the proxy adds none.
				t.Errorf("User-Agent %q", ua)
			}
			if v := resp.Header.Get("X-Upstream-Hop"); v != "" {
				t.Errorf("client got the upstream's hop-by-hop header: %q", v)
			}
			if resp.Header.Get("X-End-To-End") != "kept" {
				t.Errorf("end-to-end response headers lost: %v", resp.Header)
			}
		})
	}
}

func TestNoUserAgentIsAdded(t *testing.T) {
	seen := make(chan http.Header, 1)
	p := startUpstream(t, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
	}))
	conn, err := net.Dial("tcp", p.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET http://api.test/ua HTTP/1.1\r\nHost: api.test\r\napikey: k1\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ua, ok := (<-seen)["User-Agent"]; ok {
		t.Errorf("the proxy added a User-Agent: %q", ua)
	}
}

func TestTrailersReachTheClient(t *testing.T) {
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			p := startUpstream(t, sc.tls, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Trailer", "X-Checksum")
				io.WriteString(w, "body")
				w.Header().Set("X-Checksum", "abc")
				w.Header().Set(http.TrailerPrefix+"X-Late", "unannounced")
			}))
			req, _ := http.NewRequest(http.MethodGet, sc.prefix+"/t", nil)
			req.Header.Set("apikey", "k1")
			resp, err := p.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(body) != "body" {
				t.Fatalf("body %q, %v", body, err)
			}
			if got := resp.Trailer.Get("X-Checksum"); got != "abc" {
				t.Errorf("announced trailer X-Checksum = %q, want abc (trailers %v)", got, resp.Trailer)
			}
			if got := resp.Trailer.Get("X-Late"); got != "unannounced" {
				t.Errorf("unannounced trailer X-Late = %q (trailers %v)", got, resp.Trailer)
			}
		})
	}
}

// TestBodyCutUpstreamIsCutForTheClient: when the upstream dies half-way
// through a body, the client must see an error, never a shorter body that
// looks whole, and the request is logged as an error.
func TestBodyCutUpstreamIsCutForTheClient(t *testing.T) {
	for _, sc := range schemes {
		for _, mode := range []string{"content-length", "chunked"} {
			t.Run(sc.name+"/"+mode, func(t *testing.T) {
				p := startUpstream(t, sc.tls, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if mode == "content-length" {
						w.Header().Set("Content-Length", "100")
					}
					io.WriteString(w, "partial")
					w.(http.Flusher).Flush()
					panic(http.ErrAbortHandler) // the upstream drops the connection
				}))
				req, _ := http.NewRequest(http.MethodGet, sc.prefix+"/cut", nil)
				req.Header.Set("apikey", "k1")
				resp, err := p.client().Do(req)
				if err != nil {
					return // cut before the headers: also an error, fine
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil {
					t.Fatalf("client read %q and a clean end: the cut body passed for a whole one", body)
				}
				if !strings.HasPrefix("partial", string(body)) {
					t.Errorf("body %q", body)
				}
				// Logged as the proxy's failure, never as a pass (issue 12).
				if logs := p.logs.String(); !strings.Contains(logs, `"decision":"error"`) || !strings.Contains(logs, `"error":"reading the upstream's response body`) {
					t.Errorf("the request's log line does not name the cut body as an error:\n%s", p.logs)
				}
			})
		}
	}
}

func TestEarlyHintsArePassedOn(t *testing.T) {
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			p := startUpstream(t, sc.tls, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Link", "</style.css>; rel=preload")
				w.WriteHeader(http.StatusEarlyHints)
				w.Header().Del("Link") // for the 103 only
				io.WriteString(w, "done")
			}))
			var hints []string
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				hints = append(hints, fmt.Sprintf("%d %s", code, h.Get("Link")))
				return nil
			}}
			req, _ := http.NewRequest(http.MethodGet, sc.prefix+"/hints", nil)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
			req.Header.Set("apikey", "k1")
			resp, err := p.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "done" {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			if len(hints) != 1 || hints[0] != "103 </style.css>; rel=preload" {
				t.Errorf("1xx answers seen by the client: %q", hints)
			}
			if resp.Header.Get("Link") != "" {
				t.Errorf("the 103's headers leaked into the final answer: %v", resp.Header)
			}
		})
	}
}

// TestUpgradedConnectionsAreSpliced: a WebSocket-style upgrade passes
// through the proxy, and bytes flow both ways after the 101.
func TestUpgradedConnectionsAreSpliced(t *testing.T) {
	p := startUpstream(t, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "upgrade expected", http.StatusBadRequest)
			return
		}
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "echo")
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		line, _ := rw.ReadString('\n')
		rw.WriteString("echo: " + line)
		rw.Flush()
	}))
	conn, err := net.Dial("tcp", p.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET http://api.test/ws HTTP/1.1\r\nHost: api.test\r\napikey: k1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	fmt.Fprint(conn, "ping\n")
	line, err := br.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if line != "echo: ping\n" {
		t.Errorf("after the upgrade the upstream answered %q", line)
	}
	conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.logs.String(), `"status":101`) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with status 101 once the connection closed:\n%s", p.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
