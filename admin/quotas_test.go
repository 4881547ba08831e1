package admin_test

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/admin"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

func getQuotas(t *testing.T, rawURL string) admin.QuotasPage {
	t.Helper()
	code, body, h := fetch(t, rawURL)
	if code != 200 || h.Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %d %s\n%s", rawURL, code, h.Get("Content-Type"), body)
	}
	var page admin.QuotasPage
	if err := json.Unmarshal([]byte(body), &page); err != nil {
		t.Fatalf("GET %s: %v\n%s", rawURL, err, body)
	}
	return page
}

func asJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func ptr[T any](v T) *T { return &v }

// TestQuotasDescribeEachKeySeen: after scripted traffic, /v1/quotas shows
// each key's limits as configured with their margin, the requests used in
// the current windows, what is left, the next free slot, the queue, the
// cooldown and what the upstream reported.
func TestQuotasDescribeEachKeySeen(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	t0 := clock.Now()
	store := quota.NewMemoryStore(clock)
	rec := admin.NewRecorder(0)
	margin := 600 * time.Millisecond
	type key struct {
		fp       string
		limit    quota.Limit
		requests int
	}
	storeKey := func(fp string) string { return "api/cred/" + fp + "0123456789abcdef" }
	for _, k := range []key{{"aaaaaaaaaaaa", quota.Limit{Count: 5, Window: time.Minute}, 2}, {"bbbbbbbbbbbb", quota.Limit{Count: 2, Window: time.Minute}, 3}} {
		enforced := []quota.Limit{{Count: k.limit.Count, Window: k.limit.Window + margin}}
		for range k.requests {
			res, err := store.Reserve(ctx, quota.Request{Key: storeKey(k.fp), Limits: enforced, MaxWait: time.Hour, MaxQueue: 10})
			if err != nil || !res.OK {
				t.Fatalf("reserve: %+v %v", res, err)
			}
			if res.Delay() == 0 {
				store.Settle(ctx, res, clock.Now())
			}
		}
		rec.Observe(decision.Record{Start: t0, Method: "GET", Upstream: "api", Key: k.fp, Identity: "header:apikey", StoreKey: storeKey(k.fp),
			Limits: []quota.Limit{k.limit}, Enforced: enforced, Decision: decision.Pass, Status: 200, Attempts: 1})
	}
	store.Observe(ctx, storeKey("aaaaaaaaaaaa"), quota.Observation{SentAt: t0, Remaining: 1, ResetAt: t0.Add(40 * time.Second),
		Limits: []quota.Limit{{Count: 10, Window: time.Minute}}, KeepFor: 2 * time.Minute})
	store.Hold(ctx, storeKey("bbbbbbbbbbbb"), 20*time.Second)
	clock.Advance(10 * time.Second)
	now := clock.Now()

	srv := newAdmin(t, admin.Options{Recorder: rec, Store: store})
	page := getQuotas(t, srv.URL+"/v1/quotas")
	want := admin.QuotasPage{Now: now, Keys: []admin.KeyQuota{
		{
			Upstream: "api", Key: "aaaaaaaaaaaa", Identity: "header:apikey", LastSeen: t0,
			Limits: []admin.LimitQuota{
				{Limit: "5/1m", Source: "config", Count: 5, WindowSeconds: 60, MarginSeconds: 0.6, Used: 2, Remaining: 3, NextFree: now},
				{Limit: "10/1m", Source: "learned", Count: 10, WindowSeconds: 60, Used: 2, Remaining: 8, NextFree: now},
			},
			Remaining: 1, NextFree: now, // the upstream's report is the least
			Learned: &admin.Learned{Remaining: ptr(1), ResetAt: ptr(t0.Add(40 * time.Second)), Limits: []string{"10/1m"}, LimitsUntil: ptr(t0.Add(2 * time.Minute))},
		},
		{
			Upstream: "api", Key: "bbbbbbbbbbbb", Identity: "header:apikey", LastSeen: t0,
			Limits: []admin.LimitQuota{
				{Limit: "2/1m", Source: "config", Count: 2, WindowSeconds: 60, MarginSeconds: 0.6, Used: 2, Remaining: 0, NextFree: t0.Add(time.Minute + margin)},
			},
			Remaining: 0, NextFree: t0.Add(time.Minute + margin), Queued: 1,
			HoldUntil: ptr(t0.Add(20 * time.Second)), CooldownSeconds: 10, Probing: true, // after the hold, one request goes first
		},
	}}
	if got, w := asJSON(t, page), asJSON(t, want); got != w {
		t.Errorf("/v1/quotas:\n%s\nwant:\n%s", got, w)
	}
	_, body, _ := fetch(t, srv.URL+"/v1/quotas")
	for _, field := range []string{`"next_free"`, `"cooldown_seconds": 10`, `"margin_seconds": 0.6`, `"source": "learned"`, `"hold_until"`, `"queued": 1`} {
		if !strings.Contains(body, field) {
			t.Errorf("the document lacks %s:\n%s", field, body)
		}
	}
}

// TestQuotasArePaged: ?limit= pages through every key once, in order of
// upstream and fingerprint; ?upstream= keeps one upstream.
func TestQuotasArePaged(t *testing.T) {
	rec := admin.NewRecorder(0)
	for _, k := range []string{"other/o2", "api/a3", "api/a1", "other/o1", "api/a2"} {
		up, fp, _ := strings.Cut(k, "/")
		rec.Observe(decision.Record{Method: "GET", Upstream: up, Key: fp, StoreKey: up + "/cred/" + fp, Decision: decision.Pass, Attempts: 1})
	}
	srv := newAdmin(t, admin.Options{Recorder: rec, Store: quota.NewMemoryStore(newFakeClock())})
	var got []string
	var sizes []int
	next := srv.URL + "/v1/quotas?limit=2"
	for pages := 0; next != ""; pages++ {
		if pages > 5 {
			t.Fatalf("more than 5 pages of 2 for 5 keys: %v", got)
		}
		page := getQuotas(t, next)
		sizes = append(sizes, len(page.Keys))
		for _, k := range page.Keys {
			got = append(got, k.Upstream+"/"+k.Key)
		}
		next = ""
		if page.NextCursor != "" {
			next = srv.URL + "/v1/quotas?limit=2&cursor=" + url.QueryEscape(page.NextCursor)
		}
	}
	if strings.Join(got, " ") != "api/a1 api/a2 api/a3 other/o1 other/o2" {
		t.Errorf("pages gave %v", got)
	}
	if len(sizes) != 3 || sizes[0] != 2 || sizes[1] != 2 || sizes[2] != 1 {
		t.Errorf("page sizes %v, want [2 2 1]", sizes)
	}
	page := getQuotas(t, srv.URL+"/v1/quotas?upstream=other")
	if len(page.Keys) != 2 || page.Keys[0].Key != "o1" || page.Keys[1].Key != "o2" || page.NextCursor != "" {
		t.Errorf("?upstream=other gave %+v", page)
	}

	for _, bad := range []string{"limit=0", "limit=1001", "limit=x", "cursor=%21%21"} {
		code, body, _ := fetch(t, srv.URL+"/v1/quotas?"+bad)
		if code != 400 || !strings.Contains(body, `"error"`) {
			t.Errorf("?%s: %d %s, want a 400 naming the problem", bad, code, body)
		}
	}
}

// TestQuotasNameAKeyTheStoreCannotRead: a key whose state cannot be read
// is listed with an error, and the failure counted.
func TestQuotasNameAKeyTheStoreCannotRead(t *testing.T) {
	rec := admin.NewRecorder(0)
	rec.Observe(decision.Record{Method: "GET", Upstream: "api", Key: "aaaaaaaaaaaa", StoreKey: "api/cred/a", Decision: decision.Pass, Attempts: 1})
	srv := newAdmin(t, admin.Options{Recorder: rec, Store: failingStore{}})
	page := getQuotas(t, srv.URL+"/v1/quotas")
	if len(page.Keys) != 1 || page.Keys[0].Error == "" || strings.Contains(page.Keys[0].Error, "refused") {
		t.Errorf("keys %+v, want one with a plain error (the store's own words stay in the metrics)", page.Keys)
	}
	if got, _ := sample(scrape(t, srv.URL), "ratelimit_proxy_store_errors_total", "op=inspect"); got < 2 {
		t.Errorf("store_errors_total{op=inspect} = %v, want the API's failure and the scrape's", got)
	}
}

// notInspector is a store that cannot describe keys.
type notInspector struct{ quota.Store }

func TestQuotasNeedAStoreThatDescribesKeys(t *testing.T) {
	srv := newAdmin(t, admin.Options{Recorder: admin.NewRecorder(0), Store: notInspector{quota.NewMemoryStore(nil)}})
	if code, body, _ := fetch(t, srv.URL+"/v1/quotas"); code != 501 || !strings.Contains(body, "cannot describe keys") {
		t.Errorf("/v1/quotas with a store that cannot describe keys: %d %s", code, body)
	}
}
