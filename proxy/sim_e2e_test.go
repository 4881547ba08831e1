package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// TestSimAnyWindowBoundAndUtilization is the promise on an exact clock:
// with 30 clients pushing one key, the upstream never sees more than N in
// any window W, and under saturation it receives N per W + margin, all of
// the quota but the margin's own cost.
func TestSimAnyWindowBoundAndUtilization(t *testing.T) {
	const n, w, windows, clients = 20, 4 * time.Second, 3, 30
	for _, sc := range schemes {
		t.Run(sc.name, func(t *testing.T) {
			runSim(t, func(t *testing.T, s *sim) {
				rec := s.recorder("upstream.test:443", sc.tls)
				p := s.proxy(simUpstreamYAML(rec.addr(), fmt.Sprintf("limits: [%d/%v]\n", n, w)))
				c := p.client()
				ctx, cancel := context.WithTimeout(context.Background(), windows*w)
				defer cancel()
				var wg sync.WaitGroup
				var mu sync.Mutex
				var errs []error
				for range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for ctx.Err() == nil {
							req, _ := http.NewRequestWithContext(ctx, http.MethodGet, sc.prefix+"/x", nil)
							req.Header.Set("apikey", "shared-key")
							resp, err := c.Do(req)
							if err != nil {
								if ctx.Err() == nil {
									mu.Lock()
									errs = append(errs, err)
									mu.Unlock()
								}
								return
							}
							io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
							if resp.StatusCode != 200 {
								mu.Lock()
								errs = append(errs, fmt.Errorf("status %d in queue mode", resp.StatusCode))
								mu.Unlock()
							}
						}
					}()
				}
				wg.Wait()
				for _, err := range errs {
					t.Error(err)
				}
				ts := rec.arrivals("shared-key")
				if got := maxInWindow(ts, w); got > n {
					t.Errorf("upstream saw %d requests within %v; limit is %d%s", got, w, n, windowViolations(ts, n, w))
				}
				// The default margin is 1% of W: N per W + 40ms is 0.990.
				if u := utilization(ts, n, w); u < 0.985 {
					t.Errorf("utilization %.4f, want >= 0.985 (W/(W+margin) = %.4f)", u, float64(w)/float64(w+40*time.Millisecond))
				}
				t.Logf("%d requests; max in any %v window %d (limit %d); utilization %.4f", len(ts), w, maxInWindow(ts, w), n, utilization(ts, n, w))
			})
		})
	}
}

// TestSendTimeIsWhenTheBytesLeave: net/http reports a request written
// (WroteRequest) when it sits in the connection's buffer, before the flush.
// The first request's flush is held up for 300ms here (a preempted
// goroutine on a loaded machine); the next request of the key must still
// reach the upstream a full window after the first one did.
func TestSendTimeIsWhenTheBytesLeave(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		rec := s.recorder("upstream.test:80", false)
		var writes atomic.Int64
		slowFirst := func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := s.net.Dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &delayedConn{Conn: c, delay: func() time.Duration {
				if writes.Add(1) == 1 {
					return 300 * time.Millisecond
				}
				return 0
			}}, nil
		}
		p := s.proxyDial(simUpstreamYAML(rec.addr(), "limits: [1/1s]\nwindow_margin: 10ms\n"), quota.NewMemoryStore(nil), slowFirst)
		c := p.client()
		done := make(chan error, 1)
		go func() { done <- wantStatus(c, "http://api.test/a", "k", 200) }()
		synctest.Wait() // the first request is in its slow flush
		if err := wantStatus(c, "http://api.test/b", "k", 200); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		ts := rec.arrivals("k")
		if len(ts) != 2 || ts[1].Sub(ts[0]) < time.Second {
			t.Fatalf("arrivals %v: want two, a full second apart (the first was sent when its flush ended)", ts)
		}
	})
}

// delayedConn waits before each Write for as long as delay says.
type delayedConn struct {
	net.Conn
	delay func() time.Duration
}

func (c *delayedConn) Write(p []byte) (int, error) {
	time.Sleep(c.delay())
	return c.Conn.Write(p)
}
