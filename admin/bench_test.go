package admin_test

import (
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/admin"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

// BenchmarkRecorderObserve is what the metrics and the key memory add to
// every request.
func BenchmarkRecorderObserve(b *testing.B) {
	rec := admin.NewRecorder(0)
	limits := []quota.Limit{{Count: 300, Window: time.Minute}}
	r := decision.Record{Start: time.Now(), Method: "GET", Host: "api.example.com", Path: "/v1/items", Upstream: "example",
		Key: "3f2a9c0d1e4b", Identity: "header:x-api-key", StoreKey: "example/cred/3f2a9c0d1e4b", Limits: limits, Enforced: limits,
		Decision: decision.Pass, Status: 200, Attempts: 1}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec.Observe(r)
		}
	})
}
