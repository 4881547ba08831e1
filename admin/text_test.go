package admin_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/admin"
	"github.com/ratelimit-proxy/ratelimit-proxy/decision"
	"github.com/ratelimit-proxy/ratelimit-proxy/quota"
)

func TestWriteStatusDrawsEachKeyWithBars(t *testing.T) {
	now := time.Date(2026, 11, 24, 6, 0, 0, 0, time.UTC)
	page := &admin.QuotasPage{Now: now, Keys: []admin.KeyQuota{
		{Upstream: "closient", Key: "7e35aaaea6b8", Identity: "header:x-api-key", Queued: 3, Limits: []admin.LimitQuota{
			{Limit: "300/1m", Source: "config", Count: 300, Used: 150, Remaining: 150, NextFree: now},
			{Limit: "10000/1d", Source: "config", Count: 10000, Used: 10000, Remaining: 0, NextFree: now.Add(42 * time.Second)},
		}},
		{Upstream: "closient", Key: "anonymous", Identity: "anonymous", CooldownSeconds: 4.2, Probing: true,
			Learned: &admin.Learned{Remaining: ptr(7), ResetAt: ptr(now.Add(90 * time.Second))}},
		{Upstream: "github", Key: "dcf1f059cedd", Identity: "authorization:bearer", Error: "the quota store did not answer"},
	}}
	var b strings.Builder
	if err := admin.WriteStatus(&b, page); err != nil {
		t.Fatal(err)
	}
	want := `closient
  7e35aaaea6b8  header:x-api-key  queue 3  cooldown none
    300/1m     [##########----------]       150/300 used    150 left  next free now
    10000/1d   [####################]   10000/10000 used      0 left  next free in 42s
  anonymous     anonymous  queue 0  cooldown 5s  probing
    upstream reports 7 left, reset in 90s

github
  dcf1f059cedd  authorization:bearer  queue 0  cooldown none  error: the quota store did not answer
`
	if b.String() != want {
		t.Errorf("status text:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	admin.WriteStatus(&b, &admin.QuotasPage{Now: now})
	if b.String() != "no key seen yet\n" {
		t.Errorf("status of no key: %q", b.String())
	}
}

// TestFetchQuotasFollowsEveryPage reads more keys than one page holds.
func TestFetchQuotasFollowsEveryPage(t *testing.T) {
	rec := admin.NewRecorder(0)
	for i := range 1234 {
		fp := strings.Repeat("0", 8) + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
		rec.Observe(decision.Record{Method: "GET", Upstream: "api", Key: fp, StoreKey: "api/cred/" + fp, Decision: decision.Pass, Attempts: 1})
	}
	srv := newAdmin(t, admin.Options{Recorder: rec, Store: quota.NewMemoryStore(newFakeClock())})
	page, err := admin.FetchQuotas(context.Background(), http.DefaultClient, srv.URL+"/")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, k := range page.Keys {
		seen[k.Key] = true
	}
	if len(page.Keys) != 1234 || len(seen) != 1234 {
		t.Errorf("fetched %d keys (%d distinct), want 1234", len(page.Keys), len(seen))
	}

	if _, err := admin.FetchQuotas(context.Background(), http.DefaultClient, srv.URL+"/nothing"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("fetching from a wrong address: %v, want an error naming the status", err)
	}
}
