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
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/redisstore/redistest"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/storetest"
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
	{"redis", newRedisStore},
}

// newRedisStore opens a Redis store on REDIS_URL, or on a redis-server
// started for the benchmark (stopped after it).
func newRedisStore(b *testing.B, clock quota.Clock) (quota.Store, func()) {
	rdb, err := redisstore.NewClient(redistest.URL(b), nil)
	if err != nil {
		b.Fatal(err)
	}
	prefix := fmt.Sprintf("rlpbench%d", time.Now().UnixNano())
	s, err := redisstore.New(context.Background(), redisstore.Options{Client: rdb, Prefix: prefix, Clock: clock, Timeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	return s, func() {
		s.Close()
		rdb.Close()
	}
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

// BenchmarkIdleKeys reports the heap held per key (the memory store) after one request of each
// of N keys (keys idle but still inside their windows), key string included.
// Run it with -benchtime 1x.
func BenchmarkIdleKeys(b *testing.B) {
	for _, st := range stores[:1] { // Redis: BenchmarkBytesPerBusyKey
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
			// A proxy decides for many requests at once: 16 goroutines per
			// core (for Redis, requests in flight while others wait for
			// their round trip).
			b.SetParallelism(16)
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

// busyProfiles are the key shapes BenchmarkBytesPerBusyKey measures.
var busyProfiles = []struct {
	name   string
	limits []quota.Limit
}{
	{"300per1m+10000per24h", []quota.Limit{{Count: 300, Window: time.Minute}, {Count: 10000, Window: 24 * time.Hour}}},
	{"100per10s+250000per24h", []quota.Limit{{Count: 100, Window: 10 * time.Second}, {Count: 250000, Window: 24 * time.Hour}}},
}

// BenchmarkBytesPerBusyKey reports what a key costs after a day of
// traffic on a fake clock (every slice of its daily window used, its
// exact history full): the heap per key for the memory store, MEMORY
// USAGE of the key's Redis keys for the Redis store. Run it with
// -benchtime 1x.
func BenchmarkBytesPerBusyKey(b *testing.B) {
	const steps = 1200 // sends per key over the day, bursts at the end
	for _, st := range stores {
		for _, prof := range busyProfiles {
			b.Run(st.name+"/"+prof.name, func(b *testing.B) {
				keys := 200
				if st.name == "redis" {
					keys = 10
				}
				ctx := context.Background()
				var perKey float64
				for range b.N {
					clock := storetest.NewFakeClock()
					before := heapInUse()
					s, done := st.new(b, clock)
					send := func(key string) {
						r, err := s.Reserve(ctx, quota.Request{Key: key, Limits: prof.limits})
						if err != nil {
							b.Fatal(err)
						}
						if r.OK && r.Delay() == 0 {
							s.Settle(ctx, r, clock.Now())
						}
					}
					for step := range steps {
						if step < steps-400 {
							clock.Advance(24 * time.Hour / (steps - 400))
						} else {
							clock.Advance(10 * time.Millisecond) // a burst fills the exact history
						}
						for k := range keys {
							send(proxyKey(k))
						}
					}
					if st.name == "redis" {
						perKey = redisBytesPerKey(b, s, keys)
					} else {
						perKey = float64(int64(heapInUse())-int64(before)) / float64(keys)
					}
					runtime.KeepAlive(s)
					done()
				}
				b.ReportMetric(perKey, "B/key")
			})
		}
	}
}

// redisBytesPerKey writes what the store queued, then sums MEMORY USAGE
// over the Redis keys of the store's quota keys.
func redisBytesPerKey(b *testing.B, s quota.Store, keys int) float64 {
	rs := s.(*redisstore.Store)
	ctx := context.Background()
	if err := rs.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	total := int64(0)
	for k := range keys {
		for _, name := range rs.KeyNames(proxyKey(k)) {
			n, err := rs.Client().MemoryUsage(ctx, name).Result()
			if err != nil {
				b.Fatalf("MEMORY USAGE %s: %v", name, err)
			}
			total += n
		}
	}
	return float64(total) / float64(keys)
}
