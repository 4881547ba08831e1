package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota/fallback"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore/redistest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

var redisPrefixes atomic.Int64

// replica is one proxy with its own connection to the shared Redis, as a
// sidecar per pod has.
type replica struct {
	p     *running
	store *fallback.Store
	logs  *observer.ObservedLogs
}

// startReplicas starts n proxies sharing the Redis at url under a prefix
// of their own, each behind the fallback of mode with the given store
// timeout.
func startReplicas(t *testing.T, n int, url, yamlText string, mode fallback.Mode, timeout time.Duration) []*replica {
	t.Helper()
	prefix := fmt.Sprintf("rlpe2e%d-%d", time.Now().UnixNano()%1e6, redisPrefixes.Add(1))
	var rs []*replica
	for range n {
		rdb, err := redisstore.NewClient(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rdb.Close() })
		st, err := redisstore.New(context.Background(), redisstore.Options{Client: rdb, Prefix: prefix, Timeout: timeout})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		core, logs := observer.New(zap.InfoLevel)
		fb := fallback.New(st, fallback.Options{Mode: mode, Replicas: n, ProbeEvery: 200 * time.Millisecond, Log: zap.New(core)})
		t.Cleanup(fb.Close)
		rs = append(rs, &replica{p: startProxyStore(t, yamlText, fb), store: fb, logs: logs})
	}
	return rs
}

// load runs clients per replica, each sending GETs of key in a loop until
// ctx ends, and reports every answer's status and how long it took.
type outcome struct {
	replica int
	status  int
	took    time.Duration
	at      time.Time
	err     error
	retry   string
	body    string
}

func load(ctx context.Context, rs []*replica, clients int, url, key string) []outcome {
	var mu sync.Mutex
	var out []outcome
	var wg sync.WaitGroup
	for i, r := range rs {
		c := r.p.client()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					start := time.Now()
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
					req.Header.Set("apikey", key)
					resp, err := c.Do(req)
					o := outcome{replica: i, took: time.Since(start), at: start, err: err}
					if err == nil {
						head, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						o.body = string(head)
						o.status, o.retry = resp.StatusCode, resp.Header.Get("Retry-After")
					} else if ctx.Err() != nil {
						return
					}
					mu.Lock()
					out = append(out, o)
					mu.Unlock()
					if err == nil && resp.StatusCode == http.StatusTooManyRequests {
						select { // a refused client backs off a little
						case <-ctx.Done():
						case <-time.After(20 * time.Millisecond):
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	return out
}

// TestReplicasShareOneQuotaThroughRedis: three proxies on one Redis, each
// with its own clients, one key at twice its quota. The upstream never
// gets more than N in any window (read from kernel receive times), gets at
// least 95% of N per window, and never throttles.
func TestReplicasShareOneQuotaThroughRedis(t *testing.T) {
	url := redistest.URL(t)
	const n, w, windows = 30, 2 * time.Second, 3
	rec := newRecorder(t, false)
	rs := startReplicas(t, 3, url, upstreamYAML(rec, fmt.Sprintf("limits: [%d/%v]\nmax_wait: 10s\n", n, w)), fallback.Local, 2*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), windows*w+500*time.Millisecond)
	defer cancel()
	out := load(ctx, rs, 8, "http://api.test/x", "shared-key")
	perReplica := map[int]int{}
	for _, o := range out {
		if o.err != nil || o.status != http.StatusOK {
			t.Errorf("replica %d: status %d err %v", o.replica, o.status, o.err)
			continue
		}
		perReplica[o.replica]++
	}
	ts := rec.arrivals("shared-key")
	if got := maxInWindow(ts, w); got > n {
		t.Errorf("upstream received %d requests within %v across three replicas; the limit is %d%s", got, w, n, windowViolations(ts, n, w))
	}
	if len(ts) == 0 {
		t.Fatal("no request reached the upstream")
	}
	used := 0
	for _, at := range ts {
		if at.Sub(ts[0]) < windows*w {
			used++
		}
	}
	if min := n * windows * 95 / 100; used < min {
		t.Errorf("the upstream got %d requests in the first %d windows, want >= %d (95%% of %d/%v)", used, windows, min, n, w)
	}
	for i, r := range rs {
		if perReplica[i] == 0 {
			t.Errorf("replica %d passed no request", i)
		}
		if r.store.Down() {
			t.Errorf("replica %d fell back from Redis under load", i)
		}
	}
	t.Logf("%d requests at the upstream; max in any %v: %d (limit %d); %d in the first %d windows; per replica %v",
		len(ts), w, maxInWindow(ts, w), n, used, windows, perReplica)
}

// TestAThrottleSeenByOneReplicaHoldsTheOthers: the upstream throttles a
// request through replica 0; replica 1's next request of the key is held
// (refused in reject mode) without reaching the upstream.
func TestAThrottleSeenByOneReplicaHoldsTheOthers(t *testing.T) {
	url := redistest.URL(t)
	v := newVendor(t, "closient", 1, time.Minute) // a quota of one: the second request is throttled
	rs := startReplicas(t, 2, url, vendorYAML(v, "closient", "limits: [100/1s]\nmode: reject\nlearn: {mode: off}\nthrottle: {default_wait: 30s}\n"), fallback.Local, 2*time.Second)
	c0, c1 := rs[0].p.client(), rs[1].p.client()
	if code, _, _ := get(t, c0, "http://api.test/a", "k"); code != http.StatusOK {
		t.Fatalf("first request: %d", code)
	}
	if code, _, _ := get(t, c0, "http://api.test/b", "k"); code != http.StatusTooManyRequests {
		t.Fatalf("second request (the vendor throttles): %d, want 429", code)
	}
	code, body, _ := get(t, c1, "http://api.test/c", "k")
	if code != http.StatusTooManyRequests || !strings.Contains(body, "slow down") {
		t.Errorf("replica 1 after replica 0 was throttled: %d %s, want a local 429 for the hold", code, body)
	}
	if arrivals, _, _ := v.counts(); len(arrivals) != 2 {
		t.Errorf("the vendor saw %d requests, want 2: replica 1 did not keep the hold", len(arrivals))
	}
}
