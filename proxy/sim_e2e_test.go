package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
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
