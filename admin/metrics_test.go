package admin_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/admin"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota/fallback"
)

var minute = []quota.Limit{{Count: 1, Window: time.Minute}}

// TestMetricsCountEachRecordOnce feeds a scripted set of decision records
// and checks every family and value a scrape must show for them.
func TestMetricsCountEachRecordOnce(t *testing.T) {
	rec := admin.NewRecorder(0)
	api := func(r decision.Record) decision.Record {
		r.Method, r.Host, r.Path, r.Upstream = "GET", "api.test", "/x", "api"
		r.Key, r.Identity, r.StoreKey, r.Enforced = "3f2a9c0d1e4b", "header:apikey", "api/cred/3f2a9c0d1e4bffff", minute
		return r
	}
	records := []decision.Record{
		api(decision.Record{Decision: decision.Pass, Status: 200, Attempts: 1}),
		api(decision.Record{Decision: decision.Pass, Status: 200, Attempts: 1}),
		api(decision.Record{Decision: decision.Pass, Status: 200, Attempts: 1}),
		api(decision.Record{Decision: decision.Queued, Status: 200, Attempts: 1, QueueWait: 1500 * time.Millisecond}),
		api(decision.Record{Decision: decision.Rejected, Status: 429, Attempts: 1}),
		api(decision.Record{Decision: decision.Rejected, Status: 429, Attempts: 1}),
		api(decision.Record{Decision: decision.QueueFull, Status: 429, Attempts: 1}),
		api(decision.Record{Decision: decision.Pass, Status: 429, Attempts: 1, Throttles: 1, ThrottleRule: "status:429"}),
		api(decision.Record{Decision: decision.Queued, Status: 200, Attempts: 2, Throttles: 1, ThrottleRule: "marker:rate_limit_reached", QueueWait: 2 * time.Second}),
		api(decision.Record{Decision: decision.Error, Status: 502, Attempts: 1, Error: "connection refused"}),
		api(decision.Record{Decision: decision.Error, Status: 503, StoreFailed: true}),
		api(decision.Record{Decision: decision.ClientGone, Attempts: 1, QueueWait: 300 * time.Millisecond}),
		api(decision.Record{Decision: decision.Shutdown, Status: 503, Attempts: 1}),
		{Method: "GET", Host: "example.com", Decision: decision.Unlimited, Status: 200},
		{Method: "GET", Host: "example.com", Decision: decision.Unlimited, Status: 200},
		{Method: "GET", Decision: decision.Error, Status: 400},
		{Method: "GET", Host: "blocked.test", Decision: decision.Denied, Status: 403},
		{Method: "CONNECT", Host: "example.com:443", Decision: decision.Tunnel},
		{Method: "CONNECT", Host: "api.test:443", Upstream: "api", Decision: decision.Intercept},
	}
	for _, r := range records {
		rec.Observe(r)
	}
	srv := newAdmin(t, admin.Options{
		Recorder: rec,
		Store:    quota.NewMemoryStore(newFakeClock()),
		Conns:    func() (int, int, int) { return 4, 2, 1 },
		Reloads:  func() uint64 { return 3 },
	})
	fams := scrape(t, srv.URL)

	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ratelimit_proxy_requests_total", []string{"decision=forwarded", "upstream=api"}, 3},
		{"ratelimit_proxy_requests_total", []string{"decision=queued", "upstream=api"}, 2},
		{"ratelimit_proxy_requests_total", []string{"decision=rejected_locally", "upstream=api"}, 2},
		{"ratelimit_proxy_requests_total", []string{"decision=queue_full", "upstream=api"}, 1},
		{"ratelimit_proxy_requests_total", []string{"decision=throttled_upstream", "upstream=api"}, 1},
		{"ratelimit_proxy_requests_total", []string{"decision=upstream_error", "upstream=api"}, 1},
		{"ratelimit_proxy_requests_total", []string{"decision=store_error", "upstream=api"}, 1},
		{"ratelimit_proxy_requests_total", []string{"decision=client_gone", "upstream=api"}, 1},
		{"ratelimit_proxy_requests_total", []string{"decision=shutdown", "upstream=api"}, 1},
		{"ratelimit_proxy_requests_total", []string{"decision=forwarded", "upstream="}, 2},
		{"ratelimit_proxy_requests_total", []string{"decision=bad_request", "upstream="}, 1},
		{"ratelimit_proxy_requests_total", []string{"decision=denied", "upstream="}, 1},
		{"ratelimit_proxy_connects_total", []string{"decision=tunnel", "upstream="}, 1},
		{"ratelimit_proxy_connects_total", []string{"decision=intercept", "upstream=api"}, 1},
		{"ratelimit_proxy_retries_total", []string{"upstream=api"}, 1},
		{"ratelimit_proxy_upstream_throttles_total", []string{"rule=status:429", "upstream=api"}, 1},
		{"ratelimit_proxy_upstream_throttles_total", []string{"rule=marker:rate_limit_reached", "upstream=api"}, 1},
		{"ratelimit_proxy_queue_wait_seconds", []string{"upstream=api"}, 7}, // 3 pass, 2 queued, 1 throttled pass, 1 gone while queued
		{"ratelimit_proxy_store_errors_total", []string{"op=admit"}, 1},
		{"ratelimit_proxy_open_connections", []string{"kind=direct"}, 4},
		{"ratelimit_proxy_open_connections", []string{"kind=intercepted"}, 2},
		{"ratelimit_proxy_open_tunnels", nil, 1},
		{"ratelimit_proxy_reloads_total", nil, 3},
		{"ratelimit_proxy_keys", []string{"upstream=api"}, 1},
		{"ratelimit_proxy_queue_depth", []string{"upstream=api"}, 0},
	} {
		got, ok := sample(fams, tc.name, tc.labels...)
		if !ok || got != tc.want {
			t.Errorf("%s{%s} = %v (found %v), want %v", tc.name, strings.Join(tc.labels, ","), got, ok, tc.want)
		}
	}
	// Each request counts once: the decisions add up to the records.
	var total float64
	for _, m := range fams["ratelimit_proxy_requests_total"].GetMetric() {
		total += m.GetCounter().GetValue()
	}
	if total != 17 {
		t.Errorf("requests_total adds up to %v, want 17 (the records that are not CONNECTs)", total)
	}
	h := fams["ratelimit_proxy_queue_wait_seconds"].GetMetric()[0].GetHistogram()
	if math.Abs(h.GetSampleSum()-3.8) > 1e-9 {
		t.Errorf("queue wait sum %v, want 3.8", h.GetSampleSum())
	}
	for _, b := range h.GetBucket() {
		want := map[float64]uint64{0.25: 4, 0.5: 5, 1: 5, 2.5: 7}[b.GetUpperBound()]
		if want != 0 && b.GetCumulativeCount() != want {
			t.Errorf("queue wait bucket le=%v holds %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}

	// Label values are bounded: no fingerprint, no host, no path.
	allowed := map[string]bool{"upstream": true, "decision": true, "rule": true, "kind": true, "op": true, "le": true}
	for name, f := range fams {
		if !strings.HasPrefix(name, "ratelimit_proxy_") {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !allowed[lp.GetName()] {
					t.Errorf("%s has a label %q", name, lp.GetName())
				}
				for _, leak := range []string{"3f2a9c0d1e4b", "api.test", "example.com", "/x"} {
					if strings.Contains(lp.GetValue(), leak) {
						t.Errorf("%s label %s=%q holds %q", name, lp.GetName(), lp.GetValue(), leak)
					}
				}
			}
		}
	}
}

// TestMetricsReadQueueDepthAndLearnedRemainingFromTheStore: the gauges of
// an upstream sum (queue) or take the least (learned remaining) over the
// keys seen, as the store tells their state at the scrape.
func TestMetricsReadQueueDepthAndLearnedRemainingFromTheStore(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	store := quota.NewMemoryStore(clock)
	rec := admin.NewRecorder(0)
	seen := func(upstream, fp string) string {
		key := upstream + "/cred/" + fp
		rec.Observe(decision.Record{Method: "GET", Upstream: upstream, Key: fp, Identity: "header:apikey", StoreKey: key,
			Limits: minute, Enforced: minute, Decision: decision.Pass, Status: 200, Attempts: 1})
		return key
	}
	a, b, c := seen("api", "aaaaaaaaaaaa"), seen("api", "bbbbbbbbbbbb"), seen("api", "cccccccccccc")
	seen("other", "dddddddddddd")

	// a: one request sent, two queued for later slots.
	for i := range 3 {
		res, err := store.Reserve(ctx, quota.Request{Key: a, Limits: minute, MaxWait: time.Hour, MaxQueue: 10})
		if err != nil || !res.OK {
			t.Fatalf("reserve %d: %+v %v", i, res, err)
		}
		if i == 0 {
			store.Settle(ctx, res, clock.Now())
		}
	}
	// b and c: the upstream reports what is left.
	store.Observe(ctx, b, quota.Observation{SentAt: clock.Now(), Remaining: 7, ResetAt: clock.Now().Add(30 * time.Second)})
	store.Observe(ctx, c, quota.Observation{SentAt: clock.Now(), Remaining: 3, ResetAt: clock.Now().Add(30 * time.Second)})

	srv := newAdmin(t, admin.Options{Recorder: rec, Store: store})
	fams := scrape(t, srv.URL)
	for _, tc := range []struct {
		name, upstream string
		want           float64
	}{
		{"ratelimit_proxy_queue_depth", "api", 2},
		{"ratelimit_proxy_queue_depth", "other", 0},
		{"ratelimit_proxy_learned_remaining", "api", 3},
		{"ratelimit_proxy_keys", "api", 3},
		{"ratelimit_proxy_keys", "other", 1},
	} {
		if got, ok := sample(fams, tc.name, "upstream="+tc.upstream); !ok || got != tc.want {
			t.Errorf("%s{upstream=%s} = %v (found %v), want %v", tc.name, tc.upstream, got, ok, tc.want)
		}
	}
	if _, ok := sample(fams, "ratelimit_proxy_learned_remaining", "upstream=other"); ok {
		t.Error("learned_remaining{upstream=other} is shown, but no report is in force for it")
	}

	clock.Advance(31 * time.Second) // the reported window is over
	fams = scrape(t, srv.URL)
	if got, ok := sample(fams, "ratelimit_proxy_learned_remaining", "upstream=api"); ok {
		t.Errorf("learned_remaining{upstream=api} = %v after the reset; want it gone", got)
	}
}

// TestStoreFailuresAreCounted: a store that does not answer makes the
// scrape count inspect errors, not fail.
func TestStoreFailuresAreCounted(t *testing.T) {
	rec := admin.NewRecorder(0)
	rec.Observe(decision.Record{Method: "GET", Upstream: "api", Key: "aaaaaaaaaaaa", StoreKey: "api/cred/a", Decision: decision.Pass, Status: 200, Attempts: 1})
	srv := newAdmin(t, admin.Options{Recorder: rec, Store: failingStore{}})
	fams := scrape(t, srv.URL)
	if got, _ := sample(fams, "ratelimit_proxy_store_errors_total", "op=inspect"); got != 1 {
		t.Errorf("store_errors_total{op=inspect} = %v after one failed scrape, want 1", got)
	}
}

// TestRecorderForgetsTheLeastRecentKeys: the keys remembered are bounded.
func TestRecorderForgetsTheLeastRecentKeys(t *testing.T) {
	rec := admin.NewRecorder(2)
	for _, fp := range []string{"aaaaaaaaaaaa", "bbbbbbbbbbbb", "aaaaaaaaaaaa", "cccccccccccc"} {
		rec.Observe(decision.Record{Method: "GET", Upstream: "api", Key: fp, StoreKey: "api/cred/" + fp, Decision: decision.Pass, Attempts: 1})
	}
	srv := newAdmin(t, admin.Options{Recorder: rec, Store: quota.NewMemoryStore(newFakeClock())})
	page := getQuotas(t, srv.URL+"/v1/quotas")
	var got []string
	for _, k := range page.Keys {
		got = append(got, k.Key)
	}
	if strings.Join(got, " ") != "aaaaaaaaaaaa cccccccccccc" {
		t.Errorf("remembered %v, want the two most recent (b was the least recently seen)", got)
	}
}

// sharedDown is a shared store (Redis) that fails every call.
type sharedDown struct{ *quota.MemoryStore }

func (sharedDown) Reserve(context.Context, quota.Request) (quota.Reservation, error) {
	return quota.Reservation{}, errDown
}
func (sharedDown) Ping(context.Context) error                      { return errDown }
func (sharedDown) Record(string, []quota.Limit, []time.Time) error { return nil }

// TestASharedStoreOutageShowsInReadyzAndMetrics: with a shared store behind
// the fallback, requests are still decided while it fails, but /readyz
// says the store does not answer, ratelimit_proxy_store_down is 1, and
// store_errors_total{op="shared"} counts its failed calls once each.
func TestASharedStoreOutageShowsInReadyzAndMetrics(t *testing.T) {
	fb := fallback.New(sharedDown{quota.NewMemoryStore(nil)}, fallback.Options{Mode: fallback.Local, ProbeEvery: time.Hour})
	defer fb.Close()
	srv := newAdmin(t, admin.Options{Recorder: admin.NewRecorder(0), Store: fb})
	fams := scrape(t, srv.URL)
	if got, ok := sample(fams, "ratelimit_proxy_store_down", ""); !ok || got != 0 {
		t.Errorf("store_down = %v (present %t) before any failure, want 0", got, ok)
	}
	if code, body, _ := fetch(t, srv.URL+"/readyz"); code != 503 || !strings.Contains(body, "store: connection refused") {
		t.Errorf("/readyz with the shared store not answering: %d %q, want 503 naming the store", code, body)
	}
	for _, key := range []string{"a", "b"} { // the second is decided locally at once: one failure
		if r, err := fb.Reserve(context.Background(), quota.Request{Key: key, Limits: []quota.Limit{{Count: 1, Window: time.Second}}}); err != nil || !r.OK {
			t.Fatalf("reserve %s during the outage: %+v %v, want decided locally", key, r, err)
		}
	}
	for range 2 { // a second scrape adds nothing new
		fams = scrape(t, srv.URL)
		if got, _ := sample(fams, "ratelimit_proxy_store_errors_total", "op=shared"); got != 1 {
			t.Errorf("store_errors_total{op=shared} = %v after one failed call, want 1", got)
		}
		if got, _ := sample(fams, "ratelimit_proxy_store_down", ""); got != 1 {
			t.Errorf("store_down = %v during the outage, want 1", got)
		}
	}
	if code, body, _ := fetch(t, srv.URL+"/readyz"); code != 503 || !strings.Contains(body, "on_store_error local since") {
		t.Errorf("/readyz during the outage: %d %q, want 503 saying how requests are decided", code, body)
	}
}
