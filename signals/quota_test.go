package signals

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

// win builds an expected Window; unset numbers are Unknown.
func win(dialect, name string, limit, remaining int64, reset, period time.Duration) Window {
	return Window{Name: name, Limit: limit, Remaining: remaining, Reset: reset, Period: period, Dialect: dialect}
}

func withBucket(w Window, b string) Window { w.Bucket = b; return w }
func refill(w Window) Window               { w.Refill = true; return w }

const U = Unknown

func TestQuotaReadsEachDialect(t *testing.T) {
	date := httpDate(testNow)
	tests := []struct {
		name string
		h    http.Header
		want []Window
	}{
		{"Closient: two policies, most restrictive window, legacy aliases merged",
			hdr("Date", date,
				"RateLimit-Policy", "300;w=60, 10000;w=86400",
				"RateLimit-Limit", "10000", "RateLimit-Remaining", "8", "RateLimit-Reset", "3600",
				"X-RateLimit-Limit", "10000", "X-RateLimit-Remaining", "8", "X-RateLimit-Reset", epoch(testNow.Add(time.Hour))),
			[]Window{
				win("ietf", "", 300, U, U, time.Minute),
				win("ietf", "", 10000, 8, time.Hour, 24*time.Hour),
			}},
		{"IETF -06 with extra parameters",
			hdr("RateLimit-Policy", `100;w=10;burst=1000;comment="a, b;c", 5000;w=3600;policy="hour"`),
			[]Window{win("ietf", "", 100, U, U, 10*time.Second), win("ietf", "", 5000, U, U, time.Hour)}},
		{"IETF -08 policy and RateLimit merged by name",
			hdr("RateLimit-Policy", `"min";q=100;w=60, "day";q=1000;w=86400`, "RateLimit", `"min";r=50;t=30`),
			[]Window{win("ietf", "min", 100, 50, 30*time.Second, time.Minute), win("ietf", "day", 1000, U, U, 24*time.Hour)}},
		{"IETF -08 token names",
			hdr("RateLimit-Policy", `default;q=10;w=1`, "RateLimit", `default;r=0;t=1`),
			[]Window{win("ietf", "default", 10, 0, time.Second, time.Second)}},
		{"IETF -07 RateLimit field",
			hdr("RateLimit", "limit=100, remaining=99, reset=41"),
			[]Window{win("ietf", "", 100, 99, 41*time.Second, U)}},
		{"IETF separate headers only",
			hdr("RateLimit-Limit", "60", "RateLimit-Remaining", "59", "RateLimit-Reset", "1"),
			[]Window{win("ietf", "", 60, 59, time.Second, U)}},
		{"IETF early draft policy in RateLimit-Limit",
			hdr("RateLimit-Limit", "100, 100;w=60", "RateLimit-Remaining", "1"),
			[]Window{win("ietf", "", 100, 1, U, time.Minute)}},
		{"Clarabridge: X-RateLimit-Time is the period",
			hdr("Date", date, "X-RateLimit-Limit", "350", "X-RateLimit-Time", "3600", "X-RateLimit-Remaining", "12",
				"X-RateLimit-Reset", epoch(testNow.Add(30*time.Minute))),
			[]Window{win("x-ratelimit", "", 350, 12, 30*time.Minute, time.Hour)}},
		{"GitHub: resource is the bucket, used gives remaining",
			hdr("Date", date, "x-ratelimit-limit", "5000", "x-ratelimit-used", "1", "x-ratelimit-reset", epoch(testNow.Add(time.Hour)),
				"x-ratelimit-resource", "core"),
			[]Window{withBucket(win("x-ratelimit", "", 5000, 4999, time.Hour, U), "core")}},
		{"Discord: Reset-After beats Reset, bucket kept",
			hdr("Date", date, "X-RateLimit-Limit", "5", "X-RateLimit-Remaining", "0", "X-RateLimit-Reset", epoch(testNow.Add(3*time.Second))+".123",
				"X-RateLimit-Reset-After", "1.234", "X-RateLimit-Bucket", "abcd1234"),
			[]Window{withBucket(win("x-ratelimit", "", 5, 0, 1234*time.Millisecond, U), "abcd1234")}},
		{"X (Twitter)",
			hdr("Date", date, "x-rate-limit-limit", "900", "x-rate-limit-remaining", "899", "x-rate-limit-reset", epoch(testNow.Add(15*time.Minute))),
			[]Window{win("x-rate-limit", "", 900, 899, 15*time.Minute, U)}},
		{"Zendesk: X-Rate-Limit and ratelimit-* merged",
			hdr("X-Rate-Limit", "700", "X-Rate-Limit-Remaining", "699", "ratelimit-limit", "700", "ratelimit-remaining", "699", "ratelimit-reset", "10"),
			[]Window{win("ietf", "", 700, 699, 10*time.Second, U)}},
		{"Jira: ISO reset and Beta-RateLimit-Policy",
			hdr("Date", date, "X-RateLimit-Limit", "350", "X-RateLimit-Remaining", "10", "X-RateLimit-Reset", "2026-11-24T06:05Z",
				"Beta-RateLimit-Policy", `"global-burst";q=100;w=2`),
			[]Window{win("ietf", "global-burst", 100, U, U, 2*time.Second), win("x-ratelimit", "", 350, 10, 5*time.Minute, U)}},
		{"OpenAI requests and tokens",
			hdr("x-ratelimit-limit-requests", "60", "x-ratelimit-remaining-requests", "59", "x-ratelimit-reset-requests", "1s",
				"x-ratelimit-limit-tokens", "150000", "x-ratelimit-remaining-tokens", "149984", "x-ratelimit-reset-tokens", "6m0s"),
			[]Window{refill(win("openai", "requests", 60, 59, time.Second, U)), refill(win("openai", "tokens", 150000, 149984, 6*time.Minute, U))}},
		{"Anthropic four dimensions",
			hdr("Date", date,
				"anthropic-ratelimit-requests-limit", "50", "anthropic-ratelimit-requests-remaining", "49", "anthropic-ratelimit-requests-reset", "2026-11-24T06:00:01Z",
				"anthropic-ratelimit-tokens-limit", "80000", "anthropic-ratelimit-tokens-remaining", "79000", "anthropic-ratelimit-tokens-reset", "2026-11-24T06:00:02Z",
				"anthropic-ratelimit-input-tokens-limit", "40000", "anthropic-ratelimit-input-tokens-remaining", "39500", "anthropic-ratelimit-input-tokens-reset", "2026-11-24T06:00:03Z",
				"anthropic-ratelimit-output-tokens-limit", "8000", "anthropic-ratelimit-output-tokens-remaining", "7500", "anthropic-ratelimit-output-tokens-reset", "2026-11-24T06:00:04.5Z"),
			[]Window{
				refill(win("anthropic", "requests", 50, 49, time.Second, U)),
				refill(win("anthropic", "tokens", 80000, 79000, 2*time.Second, U)),
				refill(win("anthropic", "input-tokens", 40000, 39500, 3*time.Second, U)),
				refill(win("anthropic", "output-tokens", 8000, 7500, 4500*time.Millisecond, U)),
			}},
		{"Shopify call limit",
			hdr("X-Shopify-Shop-Api-Call-Limit", "32/40"),
			[]Window{refill(win("shopify", "api-call-limit", 40, 8, U, U))}},
		{"Salesforce usage entries",
			hdr("Sforce-Limit-Info", "api-usage=18/5000, per-app-api-usage=17/250(appName=sample-connected-app)"),
			[]Window{win("salesforce", "api-usage", 5000, 4982, U, 24*time.Hour), win("salesforce", "per-app-api-usage", 250, 233, U, 24*time.Hour)}},
		{"HubSpot daily, secondly and interval",
			hdr("X-HubSpot-RateLimit-Daily", "250000", "X-HubSpot-RateLimit-Daily-Remaining", "249990",
				"X-HubSpot-RateLimit-Secondly", "10", "X-HubSpot-RateLimit-Secondly-Remaining", "9",
				"X-HubSpot-RateLimit-Max", "100", "X-HubSpot-RateLimit-Remaining", "97", "X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
			[]Window{
				win("hubspot", "daily", 250000, 249990, U, 24*time.Hour),
				win("hubspot", "secondly", 10, 9, U, time.Second),
				win("hubspot", "interval", 100, 97, U, 10*time.Second),
			}},
		{"odd header case via Add",
			hdr("x-RATELIMIT-limit", "10", "X-ratelimit-REMAINING", "3"),
			[]Window{win("x-ratelimit", "", 10, 3, U, U)}},
		{"several spellings of one name, read in a fixed order",
			rawHdr("x-ratelimit-limit", "10", "X-RATELIMIT-LIMIT", "20", "X-Ratelimit-Limit", "30", "X-RateLimit-Remaining", "1"),
			[]Window{win("x-ratelimit", "", 30, 1, U, U)}},
		{"hand-built non-canonical keys",
			rawHdr("x-ratelimit-limit", "10", "X-RATELIMIT-REMAINING", "3", "ratelimit-policy", "10;w=1"),
			[]Window{win("ietf", "", 10, 3, U, time.Second)}},

		// Traps: garbage is ignored, counts and resets clamped.
		{"no headers", nil, nil},
		{"only garbage", hdr("X-RateLimit-Limit", "lots", "X-RateLimit-Remaining", "NaN", "X-RateLimit-Reset", "soon",
			"RateLimit-Policy", "abc;w=x", "X-Shopify-Shop-Api-Call-Limit", "a/b", "Sforce-Limit-Info", "api-usage"), nil},
		{"negative remaining is zero", hdr("X-RateLimit-Limit", "10", "X-RateLimit-Remaining", "-5"), []Window{win("x-ratelimit", "", 10, 0, U, U)}},
		{"remaining above limit is clamped", hdr("X-RateLimit-Limit", "10", "X-RateLimit-Remaining", "50"), []Window{win("x-ratelimit", "", 10, 10, U, U)}},
		{"infinite count is garbage", hdr("X-RateLimit-Limit", "1e999", "X-RateLimit-Remaining", "3"), []Window{win("x-ratelimit", "", U, 3, U, U)}},
		{"years-long reset is clamped", hdr("X-RateLimit-Remaining", "1", "X-RateLimit-Reset", "999999999"), []Window{win("x-ratelimit", "", U, 1, MaxReset, U)}},
		{"past reset is zero", hdr("Date", date, "X-RateLimit-Remaining", "1", "X-RateLimit-Reset", epoch(testNow.Add(-time.Hour))), []Window{win("x-ratelimit", "", U, 1, 0, U)}},
		{"bad periods are unknown", hdr("RateLimit-Policy", "5;w=0, 6;w=-3, 7;w=1e99, 8;w=NaN"),
			[]Window{win("ietf", "", 5, U, U, U), win("ietf", "", 6, U, U, U), win("ietf", "", 7, U, U, U), win("ietf", "", 8, U, U, U)}},
		{"used above limit leaves none", hdr("X-Shopify-Shop-Api-Call-Limit", "45/40"), []Window{refill(win("shopify", "api-call-limit", 40, 0, U, U))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Quota(tt.h, testNow)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Quota =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestQuotaReadsAtMostSixteenMembers(t *testing.T) {
	var b strings.Builder
	for i := range 1000 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("10;w=")
		b.WriteString(strings.Repeat("1", 1+i%5))
	}
	got := Quota(hdr("RateLimit-Policy", b.String()), testNow)
	if len(got) == 0 || len(got) > maxMembers {
		t.Errorf("Quota returned %d windows, want 1..%d", len(got), maxMembers)
	}
}

func TestQuotaKeepsAmbiguousWindowsApart(t *testing.T) {
	// Two policies with the same quota: RateLimit-Limit could be either.
	got := Quota(hdr("RateLimit-Policy", "100;w=60, 100;w=3600", "RateLimit-Limit", "100", "RateLimit-Remaining", "5"), testNow)
	want := []Window{win("ietf", "", 100, U, U, time.Minute), win("ietf", "", 100, U, U, time.Hour), win("ietf", "", 100, 5, U, U)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Quota =\n%+v\nwant\n%+v", got, want)
	}
}

func TestQuotaCapsBucketNames(t *testing.T) {
	got := Quota(hdr("X-RateLimit-Remaining", "1", "X-RateLimit-Bucket", strings.Repeat("b", 1000)), testNow)
	if len(got) != 1 || len(got[0].Bucket) != maxBucket {
		t.Errorf("Quota = %+v, want one window with a %d-byte bucket", got, maxBucket)
	}
}

func TestKnownHeadersFitTheIndex(t *testing.T) {
	if len(knownHeaders) > maxKnown {
		t.Fatalf("%d known headers, maxKnown is %d", len(knownHeaders), maxKnown)
	}
	if len(knownIndex) != len(knownHeaders) {
		t.Errorf("known headers are not unique")
	}
	for _, n := range knownHeaders {
		if n != strings.ToLower(n) {
			t.Errorf("known header %q is not lower case", n)
		}
	}
}
