// Package quotabench holds the quota-engine rows of the benchmark suite:
// bytes per idle key and decisions per second, for every store backend in
// the stores table. A new backend is one more line in that table.
//
//	go test ./bench/quotabench -run '^$' -bench IdleKeys -benchtime 1x
//	go test ./bench/quotabench -run '^$' -bench Decisions
package quotabench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// stores lists the backends measured. Each constructor returns a fresh,
// empty store and a function that releases it.
var stores = []struct {
	name string
	new  func(b *testing.B, clock quota.Clock) (quota.Store, func())
}{
	{"memory", func(_ *testing.B, clock quota.Clock) (quota.Store, func()) {
		return quota.NewMemoryStore(clock), func() {}
	}},
	// {"redis", newRedisStore}, // once a Redis store exists: one more row
}

var keyCounts = flag.String("keys", "100000,1000000", "comma-separated idle-key counts for BenchmarkIdleKeys")

// limits are a typical vendor pair (300/1m and 10000/24h), widened by the
// default window margin as the proxy does.
var limits = []quota.Limit{
	{Count: 300, Window: time.Minute + 600*time.Millisecond},
	{Count: 10000, Window: 24*time.Hour + time.Second},
}

// proxyKey builds a key the way the proxy does: upstream name, class and
// the SHA-256 of the credential in hex.
func proxyKey(i int) string {
	sum := sha256.Sum256([]byte("credential-" + strconv.Itoa(i)))
	return "closient/cred/" + hex.EncodeToString(sum[:])
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkIdleKeys reports the heap held per key after one request of each
// of N keys (keys idle but still inside their windows), key string included.
// Run it with -benchtime 1x.
func BenchmarkIdleKeys(b *testing.B) {
	for _, st := range stores {
		for _, f := range strings.Split(*keyCounts, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				b.Fatalf("-keys: bad count %q", f)
			}
			b.Run(fmt.Sprintf("%s/keys=%d", st.name, n), func(b *testing.B) {
				ctx := context.Background()
				var perKey float64
				for range b.N {
					before := heapInUse()
					s, done := st.new(b, nil)
					for i := range n {
						res, err := s.Reserve(ctx, quota.Request{Key: proxyKey(i), Limits: limits, MaxWait: 30 * time.Second, MaxQueue: 1000})
						if err != nil || !res.OK {
							b.Fatalf("reserve: %v %+v", err, res)
						}
						s.Settle(ctx, res, res.Now) // sent, as the proxy does
					}
					after := heapInUse()
					perKey = float64(int64(after)-int64(before)) / float64(n)
					runtime.KeepAlive(s)
					done()
				}
				b.ReportMetric(perKey, "B/key")
			})
		}
	}
}

// BenchmarkDecisions reports quota decisions per second: one hot key whose
// log is full (10000/24h, the largest published daily quota we model; once
// full, every decision is a refusal that reads the whole window), one hot
// key under a per-second limit it never reaches (1000 requests in the log),
// and 100k keys from parallel goroutines (GOMAXPROCS of them). Every case
// keeps the log of a key bounded, so the work per decision is too.
func BenchmarkDecisions(b *testing.B) {
	for _, st := range stores {
		for _, c := range []struct {
			name   string
			limits []quota.Limit
			clock  bool // advance a fake clock 1 ms per decision
		}{
			{"one-key-10000per24h-full", []quota.Limit{{Count: 10000, Window: 24 * time.Hour}}, false},
			{"one-key-1000rps-under-limit", []quota.Limit{{Count: 100_000, Window: time.Second}}, true},
		} {
			b.Run(st.name+"/"+c.name, func(b *testing.B) {
				var clock quota.Clock
				if c.clock {
					clock = &stepClock{now: time.Unix(1_700_000_000, 0)}
				}
				s, done := st.new(b, clock)
				defer done()
				ctx := context.Background()
				req := quota.Request{Key: proxyKey(0), Limits: c.limits}
				// Every admitted request is settled (sent), as the proxy
				// does: the store keeps unsettled ones as in flight.
				decide := func() {
					r, err := s.Reserve(ctx, req)
					if err != nil {
						b.Fatal(err)
					}
					if r.OK && r.Delay() == 0 {
						s.Settle(ctx, r, r.Now)
					}
				}
				for range 10000 { // fill the window first
					decide()
				}
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					decide()
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
			})
		}
		b.Run(st.name+"/100k-keys-parallel", func(b *testing.B) {
			s, done := st.new(b, nil)
			defer done()
			ctx := context.Background()
			keys := make([]string, 100_000)
			for i := range keys {
				keys[i] = proxyKey(i)
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					k := keys[next.Add(1)%int64(len(keys))]
					r, err := s.Reserve(ctx, quota.Request{Key: k, Limits: limits, MaxWait: 30 * time.Second, MaxQueue: 1000})
					if err != nil {
						b.Fatal(err)
					}
					if r.OK && r.Delay() == 0 {
						s.Settle(ctx, r, r.Now)
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
		})
	}
}

// stepClock is a fake clock that advances 1 ms each time it is read, so a
// hot key at "1000 decisions per second" keeps a bounded log whatever the
// real speed of the benchmark.
type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Millisecond)
	return c.now
}
