package proxy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// The tests of this file hold the proxy to its answers on an exact clock
// (see sim_test.go): every Retry-After keeps its word, and a key uses all
// of its quota.

// TestSoleCallerSendsItsWholeQuota: a key of 10 per window that nobody
// else uses sends its 10 requests back to back without waiting, while the
// vendor reports its quota: no share of it is kept back.
func TestSoleCallerSendsItsWholeQuota(t *testing.T) {
	const n, w = 10, 5 * time.Second
	runSim(t, func(t *testing.T, s *sim) {
		v := s.vendor("vendor.test:80", "closient", n, w)
		p := s.proxy(vendorYAML(v, "closient", fmt.Sprintf("limits: [%d/%v]\nmax_wait: 30s\n", n, w)))
		c := p.client()
		start := time.Now()
		for i := range n {
			if err := wantStatus(c, "http://api.test/items", "k", 200); err != nil {
				t.Fatalf("request %d: %v", i+1, err)
			}
		}
		if took := time.Since(start); took > 0 {
			t.Errorf("%d requests of a quota of %d took %v: some waited", n, n, took)
		}
		if _, throttled, _ := v.counts(); len(throttled) > 0 {
			t.Errorf("the vendor throttled %d requests", len(throttled))
		}
		// The eleventh waits for the window: the quota is spent, not kept.
		before := time.Now()
		if err := wantStatus(c, "http://api.test/items", "k", 200); err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(before); waited < w {
			t.Errorf("the eleventh request waited %v, want a full window", waited)
		}
	})
}

// TestSaturationUsesTheWholeQuotaWithVendorReports: 30 clients push a key
// while the vendor reports its quota in every answer; the vendor receives
// at least 98% of N per window (the margin's own cost is the only loss)
// and never throttles.
func TestSaturationUsesTheWholeQuotaWithVendorReports(t *testing.T) {
	const n, w, windows, clients = 20, 2 * time.Second, 10, 30
	for _, style := range []string{"closient", "engagor"} {
		t.Run(style, func(t *testing.T) {
			runSim(t, func(t *testing.T, s *sim) {
				v := s.vendor("vendor.test:80", style, n, w)
				p := s.proxy(vendorYAML(v, style, fmt.Sprintf("limits: [%d/%v]\nmax_wait: 30s\n", n, w)))
				ctx, cancel := context.WithTimeout(context.Background(), windows*w)
				defer cancel()
				ok, other := push(ctx, p.client(), clients, "http://api.test/items", "k")
				arrivals, throttled, _ := v.counts()
				if len(throttled) > 0 || other > 0 {
					t.Errorf("%d vendor throttles, %d answers other than 200", len(throttled), other)
				}
				if got := maxInWindow(arrivals, w); got > n {
					t.Errorf("the vendor saw %d in a window; limit %d", got, n)
				}
				if u := utilization(arrivals, n, w); u < 0.98 {
					t.Errorf("utilization %.4f of N per W, want >= 0.98", u)
				}
				t.Logf("%d requests in %d windows; utilization %.4f", ok, windows, utilization(arrivals, n, w))
			})
		})
	}
}

// TestGovernorSharesTheQuotaWithAnOutsideCaller: another caller spends 40%
// of the vendor's quota at the start of each window. Reading the vendor's
// headers, the proxy costs at most 2 vendor throttles per window and gets
// most of what is left.
func TestGovernorSharesTheQuotaWithAnOutsideCaller(t *testing.T) {
	const n, w, windows = 20, 2 * time.Second, 5
	runSim(t, func(t *testing.T, s *sim) {
		v := s.vendor("vendor.test:80", "closient", n, w)
		v.outside = n * 40 / 100
		p := s.proxy(vendorYAML(v, "closient", fmt.Sprintf("limits: [%d/%v]\nmax_wait: 10s\nthrottle: {min_wait: 100ms}\n", n, w)))
		ctx, cancel := context.WithTimeout(context.Background(), windows*w)
		defer cancel()
		ok, _ := push(ctx, p.client(), 30, "http://api.test/x", "k")
		_, throttled, _ := v.counts()
		perWindow := map[int64]int{}
		for _, at := range throttled {
			perWindow[int64(at.Sub(v.start)/w)]++
		}
		for win, k := range perWindow {
			if k > 2 {
				t.Errorf("window %d: %d vendor throttles, want at most 2", win, k)
			}
		}
		// The share left to us is 12 per window: we should get most of it.
		if min := int64(windows * (n - v.outside) * 8 / 10); ok < min {
			t.Errorf("%d successful requests in %d windows, want >= %d (80%% of the 12 per window left to us)", ok, windows, min)
		}
		t.Logf("throttles per window %v; %d successful requests", perWindow, ok)
	})
}

// TestCooldownAllowsOneProbePerPeriod: a vendor throttles everything for
// 2.5s and says Retry-After: 1. With 30 clients pushing, the vendor sees,
// besides the requests already on their way when its first throttle came
// back, at most one request per cooldown period: the probe.
func TestCooldownAllowsOneProbePerPeriod(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		v := s.vendor("vendor.test:80", "closient", 1000, 10*time.Second)
		v.penalty = time.Now().Add(2500 * time.Millisecond)
		// A round trip of 20ms, so that requests are on their way when the
		// first throttle comes back.
		slow := func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				time.Sleep(20 * time.Millisecond)
				h.ServeHTTP(w, r)
			})
		}
		s.serve("slow-vendor.test:80", slow(http.HandlerFunc(v.serve)))
		p := s.proxy(fmt.Sprintf(`upstreams:
  - profile: closient
    hosts: [api.test]
    connect_to: slow-vendor.test:80
    identity: [{header: apikey}]
    limits: [1000/1s]
    max_wait: 10s
    learn: {mode: off}
    throttle: {min_wait: 100ms, retry: {max_attempts: 10}}
`))
		ctx, cancel := context.WithTimeout(context.Background(), 3500*time.Millisecond)
		defer cancel()
		ok, refused := push(ctx, p.client(), 30, "http://api.test/x", "k")
		_, throttled, _ := v.counts()
		if len(throttled) == 0 {
			t.Fatal("the vendor never throttled: the test did not exercise the cooldown")
		}
		// Requests sent before the first throttle's answer arrived (20ms
		// after it was sent) were already on their way.
		first := throttled[0]
		var later []time.Duration
		for _, at := range throttled {
			if at.Sub(first) > 20*time.Millisecond {
				later = append(later, at.Sub(first))
			}
		}
		periods := int(v.penalty.Sub(first)/time.Second) + 1
		if len(later) > periods {
			t.Errorf("after the first throttle the vendor throttled %d more requests (%v); want at most one per 1s cooldown (%d)", len(later), later, periods)
		}
		if ok == 0 {
			t.Error("no request succeeded after the vendor's penalty ended")
		}
		t.Logf("throttled at the vendor: %d in all, %d after the first round trip (%v); clients: %d ok, %d refused", len(throttled), len(later), later, ok, refused)
	})
}

// TestQueuedRequestHeldBeyondMaxWaitIsAnsweredAtOnce: a queued request
// whose slot a hold moves beyond max_wait is answered at once, not held for
// the hour the vendor asked for.
func TestQueuedRequestHeldBeyondMaxWaitIsAnsweredAtOnce(t *testing.T) {
	runSim(t, func(t *testing.T, s *sim) {
		s.serve("vendor.test:80", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(300 * time.Millisecond)
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
		}))
		p := s.proxy(simUpstreamYAML("vendor.test:80", "limits: [1/1s]\nwindow_margin: 10ms\nmax_wait: 3s\nlearn: {mode: off}\n"))
		c := p.client()
		first := make(chan error, 1)
		go func() { first <- wantStatus(c, "http://api.test/a", "k", http.StatusTooManyRequests) }()
		time.Sleep(50 * time.Millisecond)
		start := time.Now()
		code, body, h := get(t, c, "http://api.test/b", "k") // queued for 1s, then held for an hour
		if took := time.Since(start); code != http.StatusTooManyRequests || took > 1100*time.Millisecond {
			t.Fatalf("queued request under a 1h hold: %d after %v (%s), want 429 when its slot came", code, took, body)
		}
		if ra, _ := strconv.Atoi(h.Get("Retry-After")); ra < 3500 {
			t.Errorf("Retry-After %q, want about an hour", h.Get("Retry-After"))
		}
		if err := <-first; err != nil {
			t.Errorf("the throttled request itself: %v", err)
		}
		synctest.Wait()
	})
}

// TestRetriesAtRetryAfterSucceed: clients burst at 2x and 2.4x a key's
// limit at the start of a window in reject mode, and each refused client
// retries once, at its Retry-After (plus a delay of its own). Refusals book
// successive slots, so (almost) every retry is admitted, and the vendor,
// which counts exactly, never sees more than its limit in any window.
func TestRetriesAtRetryAfterSucceed(t *testing.T) {
	const n, w = 25, 2 * time.Second
	for _, clients := range []int{2 * n, 12 * n / 5} {
		t.Run(fmt.Sprintf("%d clients", clients), func(t *testing.T) {
			runSim(t, func(t *testing.T, s *sim) {
				v := s.vendor("vendor.test:80", "closient", n, w)
				v.sliding = true
				p := s.proxy(vendorYAML(v, "closient", fmt.Sprintf("limits: [%d/%v]\nmode: reject\n", n, w)))
				c := p.client()
				rng := rand.New(rand.NewPCG(uint64(clients), 9))
				delays := make([]time.Duration, clients)
				for i := range delays {
					delays[i] = time.Duration(rng.IntN(50)) * time.Millisecond // the client's own delay
				}
				var refused, retried, retryOK atomic.Int64
				var wg sync.WaitGroup
				errs := make(chan error, clients)
				for i := range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						a, err := fetch(c, "http://api.test/items", "k")
						if err != nil {
							errs <- err
							return
						}
						if a.code == 200 {
							return
						}
						if a.code != http.StatusTooManyRequests {
							errs <- fmt.Errorf("first attempt: status %d", a.code)
							return
						}
						refused.Add(1)
						secs, err := strconv.Atoi(a.header.Get("Retry-After"))
						if err != nil || secs < 1 {
							errs <- fmt.Errorf("Retry-After %q", a.header.Get("Retry-After"))
							return
						}
						time.Sleep(time.Duration(secs)*time.Second + delays[i])
						retried.Add(1)
						if a, err = fetch(c, "http://api.test/items", "k"); err != nil {
							errs <- err
						} else if a.code == 200 {
							retryOK.Add(1)
						}
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Error(err)
				}
				arrivals, throttled, _ := v.counts()
				if len(throttled) > 0 {
					t.Errorf("the vendor throttled %d requests", len(throttled))
				}
				if got := maxInWindow(arrivals, w); got > n {
					t.Errorf("the vendor saw %d requests in a window of %v; its limit is %d", got, w, n)
				}
				if refused.Load() != int64(clients-n) {
					t.Errorf("%d refused at first, want %d (the first %d of the burst go at once)", refused.Load(), clients-n, n)
				}
				share := float64(retryOK.Load()) / float64(retried.Load())
				if share < 0.99 {
					t.Errorf("%d of %d retries at Retry-After succeeded (%.1f%%), want >= 99%%", retryOK.Load(), retried.Load(), 100*share)
				}
				t.Logf("%d clients: %d refused, %d of %d retries admitted; vendor: %d requests, max %d in any %v",
					clients, refused.Load(), retryOK.Load(), retried.Load(), len(arrivals), maxInWindow(arrivals, w), w)
			})
		})
	}
}

// latentDial dials through the simulation's network with a delay of 0 to
// most (uniform, whole milliseconds, from seed) on every write.
func (s *sim) latentDial(most time.Duration, seed uint64) func(context.Context, string, string) (net.Conn, error) {
	rng := rand.New(rand.NewPCG(seed, seed))
	var mu sync.Mutex
	jitter := func() time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return time.Duration(rng.IntN(int(most/time.Millisecond)+1)) * time.Millisecond
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := s.net.Dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newLatentConn(c, jitter), nil
	}
}

// TestMarginFollowsTheVendor: the vendor counts with an exact sliding log
// behind a path that delays each request by 0 to 60ms, so requests the
// proxy sent a window plus its default 10ms margin apart can arrive less
// than a window apart. The proxy learns a wider margin from the first
// throttles its own count does not explain: at most 3 of them in all, none
// in the last 5 windows, and at least 90% of the quota used over the run
// (learning included) and once learned.
func TestMarginFollowsTheVendor(t *testing.T) {
	const n, w, windows = 10, time.Second, 25
	runSim(t, func(t *testing.T, s *sim) {
		v := s.vendor("vendor.test:80", "closient", n, w)
		v.sliding = true
		dial := s.latentDial(60*time.Millisecond, 5)
		p := s.proxyDial(vendorYAML(v, "closient", fmt.Sprintf("limits: [%d/%v]\nmax_wait: 30s\nthrottle: {min_wait: 100ms}\n", n, w)), quota.NewMemoryStore(nil), dial)
		ctx, cancel := context.WithTimeout(context.Background(), windows*w)
		defer cancel()
		push(ctx, p.client(), 30, "http://api.test/items", "k")
		arrivals, throttled, _ := v.counts()
		if len(throttled) > 3 {
			t.Errorf("%d vendor throttles, want at most 3", len(throttled))
		}
		lastWindows := v.start.Add((windows - 5) * w)
		for _, at := range throttled {
			if at.After(lastWindows) {
				t.Errorf("a throttle at +%v, in the last 5 windows", at.Sub(v.start))
			}
		}
		// Utilization once learned, over the last ten windows (the first
		// ones pay for the throttles the margin is learned from, each
		// followed by the vendor's one-second Retry-After): N per the mean
		// time between request i and i+N.
		accepted := len(arrivals) - len(throttled)
		var steadyTimes []time.Time
		for _, at := range v.acceptedTimes() {
			if !at.Before(v.start.Add((windows - 10) * w)) {
				steadyTimes = append(steadyTimes, at)
			}
		}
		steady := utilization(steadyTimes, n, w)
		if steady < 0.9 {
			t.Errorf("utilization over the last 10 windows %.3f, want >= 0.9", steady)
		}
		if all := float64(accepted) / float64(windows*n); all < 0.9 {
			t.Errorf("%d accepted of %d over the run: %.3f, want >= 0.9", accepted, windows*n, all)
		}
		if !strings.Contains(p.logs.String(), "window margin widened") {
			t.Error("no log line says the margin was widened")
		}
		t.Logf("%d accepted, %d throttled (at %v); %.3f of the quota over the run, utilization %.3f over the last 10 windows",
			accepted, len(throttled), offsets(throttled, v.start), float64(accepted)/float64(windows*n), steady)
	})
}

func offsets(ts []time.Time, from time.Time) []time.Duration {
	var ds []time.Duration
	for _, at := range ts {
		ds = append(ds, at.Sub(from).Round(time.Millisecond))
	}
	return ds
}

// sharingStore is a memory store that shares margins as the Redis store
// does: every proxy built on it sees what the others learned.
type sharingStore struct {
	*quota.MemoryStore
	mu     sync.Mutex
	margin map[string]time.Duration
	setAt  map[string]time.Time
}

func (s *sharingStore) SharedMargin(_ context.Context, upstream string) (time.Duration, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.margin[upstream], s.setAt[upstream], nil
}

func (s *sharingStore) ShareMargin(_ context.Context, upstream string, d time.Duration, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.margin[upstream], s.setAt[upstream] = d, at
	return nil
}

// TestLearnedMarginIsSharedThroughTheStore: two proxies on one shared
// store; the first learns a wider margin from the vendor's throttles, and
// the second, which saw none, spaces its requests by it too.
func TestLearnedMarginIsSharedThroughTheStore(t *testing.T) {
	const n, w = 10, time.Second
	runSim(t, func(t *testing.T, s *sim) {
		store := &sharingStore{MemoryStore: quota.NewMemoryStore(nil), margin: map[string]time.Duration{}, setAt: map[string]time.Time{}}
		v := s.vendor("vendor.test:80", "closient", n, w)
		v.sliding = true
		dial := s.latentDial(60*time.Millisecond, 5)
		limits := fmt.Sprintf("limits: [%d/%v]\nmax_wait: 30s\nthrottle: {min_wait: 100ms}\n", n, w)
		a := s.proxyDial(vendorYAML(v, "closient", limits), store, dial)
		ctx, cancel := context.WithTimeout(context.Background(), 10*w)
		push(ctx, a.client(), 30, "http://api.test/items", "a")
		cancel()
		if !strings.Contains(a.logs.String(), "window margin widened") {
			t.Fatal("the first proxy learned no margin: the test did not exercise sharing")
		}
		// The second proxy, for the same upstream (name), reaches a plain
		// recorder with no delay: it has no throttle to learn from.
		rec := s.recorder("recorder.test:80", false)
		b := s.proxyWith(fmt.Sprintf("upstreams:\n  - name: closient\n    hosts: [api.test]\n    connect_to: %s\n    identity: [{header: apikey}]\n%s", rec.addr(), indent(limits, "    ")), store)
		time.Sleep(10 * time.Second) // b reads what a shared (every 5 s)
		ctx, cancel = context.WithTimeout(context.Background(), 4*w)
		push(ctx, b.client(), 30, "http://api.test/items", "b")
		cancel()
		ts := rec.arrivals("b")
		if len(ts) <= 2*n {
			t.Fatalf("the recorder saw %d requests, want more than %d", len(ts), 2*n)
		}
		gap := ts[n].Sub(ts[0])
		if gap < w+60*time.Millisecond {
			t.Errorf("the second proxy spaced request 0 and %d by %v, want the learned margin (>= 60ms) on top of %v", n, gap, w)
		}
		if !strings.Contains(b.logs.String(), "window margin adopted") {
			t.Error("no log line says the second proxy adopted the margin")
		}
		t.Logf("the second proxy's gap between request i and i+%d: %v", n, gap)
	})
}
