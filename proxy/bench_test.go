package proxy_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkForward compares a GET straight to a loopback upstream with the
// same GET through the proxy (limits that never bind), plain HTTP and
// intercepted HTTPS, keep-alive, 16 clients at once.
//
//	go test -run '^$' -bench Forward -benchtime 3s ./proxy
func BenchmarkForward(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	}))
	defer up.Close()
	run := func(b *testing.B, c *http.Client, url string) {
		b.SetParallelism(8)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Header.Set("apikey", "bench-key")
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
	b.Run("direct", func(b *testing.B) {
		run(b, &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}, up.URL+"/x")
	})
	yaml := `log: {level: warn}
upstreams:
  - name: api
    hosts: [api.test]
    connect_to: ` + up.Listener.Addr().String() + `
    identity: [{header: apikey}]
    limits: [1000000/1s]
`
	b.Run("proxy-http", func(b *testing.B) {
		p := startProxyB(b, yaml)
		run(b, p.client(), "http://api.test/x")
	})
}
