package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/ratelimit-proxy/ratelimit-proxy/proxy"
)

// TestListedHostOnAnotherPortIsNotItsUpstream: a host listed without a
// port is the upstream on its scheme's default port only. Before, any port
// of the host matched, and its connect_to redirected the dial: a request
// to another port of the vendor's host was counted, and one to
// https://host:80 went, unlimited, to the vendor's connect_to.
func TestListedHostOnAnotherPortIsNotItsUpstream(t *testing.T) {
	yaml := func(rec, secure *recorder) string {
		return fmt.Sprintf(`upstreams:
  - name: plain
    hosts: [plain.test]
    connect_to: %s
    identity: [{header: apikey}]
  - name: api
    hosts: [api.test]
    connect_to: %s
    identity: [{header: apikey}]
`, rec.addr(), secure.addr())
	}
	t.Run("deny", func(t *testing.T) {
		p := startProxy(t, "unknown_hosts: deny\n"+yaml(newRecorder(t, false), newRecorder(t, true)))
		c := p.client()
		for _, tt := range []struct {
			url  string
			want int
		}{
			{"http://plain.test/a", 200}, {"http://plain.test:80/b", 200}, {"https://api.test/c", 200}, {"https://api.test:443/d", 200},
			{"http://plain.test:8080/x", 403}, {"https://api.test:8443/x", 0}, // CONNECT refused: the client sees an error
		} {
			req, _ := http.NewRequest(http.MethodGet, tt.url, nil)
			req.Header.Set("apikey", "k")
			resp, err := c.Do(req)
			if tt.want == 0 {
				if err == nil || !strings.Contains(err.Error(), "Forbidden") {
					t.Errorf("%s: %v, want the CONNECT refused with 403", tt.url, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s: %v", tt.url, err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("%s: %d, want %d", tt.url, resp.StatusCode, tt.want)
			}
		}
	})
	t.Run("allow: dialled as named, never redirected", func(t *testing.T) {
		rec, secure := newRecorder(t, false), newRecorder(t, true)
		var mu sync.Mutex
		var dialled []string
		dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			dialled = append(dialled, addr)
			mu.Unlock()
			if addr == rec.addr() || addr == secure.addr() {
				return (&net.Dialer{}).DialContext(ctx, network, addr)
			}
			return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("test: no route")}
		}
		p := startProxyOpts(t, yaml(rec, secure), proxy.Options{Dial: dial})
		for _, rawURL := range []string{"http://plain.test:8080/x", "https://api.test:80/x", "http://api.test:443/x"} {
			c := dialRaw(t, p, "")
			fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\napikey: k\r\n\r\n", rawURL, strings.Split(rawURL, "/")[2])
			resp, body, err := c.read(http.MethodGet)
			if err != nil || resp.StatusCode != 502 {
				t.Errorf("%s: %v %s %v, want 502 (dialled as named, unreachable)", rawURL, resp, body, err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if want := []string{"plain.test:8080", "api.test:80", "api.test:443"}; strings.Join(dialled, " ") != strings.Join(want, " ") {
			t.Errorf("dialled %q, want %q", dialled, want)
		}
		if n := len(rec.all()) + len(secure.all()); n != 0 {
			t.Errorf("the upstreams' connect_to got %d requests for other ports", n)
		}
	})
}
