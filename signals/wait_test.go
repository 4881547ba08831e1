package signals

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testNow is the local time of every test response.
var testNow = time.Date(2026, 11, 24, 6, 0, 0, 0, time.UTC)

func httpDate(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

func epoch(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

func TestWaitReadsEachDialect(t *testing.T) {
	date := httpDate(testNow)
	skewed := testNow.Add(-time.Hour) // upstream clock one hour behind ours
	ahead := testNow.Add(2 * time.Hour)
	b := Bounds{Min: 0, Max: 2 * time.Hour}
	tests := []struct {
		name string
		h    http.Header
		body string
		want time.Duration
		src  Source
	}{
		// Retry-After.
		{"Retry-After seconds", hdr("Retry-After", "120"), ``, 120 * time.Second, SourceRetryAfter},
		{"Retry-After float", hdr("Retry-After", "1.5"), ``, 1500 * time.Millisecond, SourceRetryAfter},
		{"Retry-After quoted", hdr("Retry-After", `"30"`), ``, 30 * time.Second, SourceRetryAfter},
		{"Retry-After zero", hdr("Retry-After", "0"), ``, 0, SourceRetryAfter},
		{"Retry-After HTTP-date", hdr("Date", date, "Retry-After", httpDate(testNow.Add(90*time.Second))), ``, 90 * time.Second, SourceRetryAfter},
		{"Retry-After HTTP-date from a skewed upstream", hdr("Date", httpDate(skewed), "Retry-After", httpDate(skewed.Add(30*time.Second))), ``, 30 * time.Second, SourceRetryAfter},
		{"Retry-After HTTP-date without Date", hdr("Retry-After", httpDate(testNow.Add(45*time.Second))), ``, 45 * time.Second, SourceRetryAfter},
		{"Retry-After past date", hdr("Date", date, "Retry-After", httpDate(testNow.Add(-time.Hour))), ``, 0, SourceRetryAfter},
		{"Retry-After negative", hdr("Retry-After", "-5"), ``, 0, SourceRetryAfter},
		{"Retry-After 1e999", hdr("Retry-After", "1e999"), ``, 2 * time.Hour, SourceRetryAfter},
		{"Retry-After years", hdr("Retry-After", "999999999999"), ``, 2 * time.Hour, SourceRetryAfter},
		{"Retry-After NaN is skipped", hdr("Retry-After", "NaN"), ``, 0, SourceNone},
		{"Retry-After Inf is skipped", hdr("Retry-After", "+Inf", "retry-after-ms", "250"), ``, 250 * time.Millisecond, SourceRetryAfterMs},
		{"Retry-After garbage then good value", hdr("Retry-After", "soon", "Retry-After", "5"), ``, 5 * time.Second, SourceRetryAfter},
		{"Retry-After wins over RateLimit", hdr("Retry-After", "12", "RateLimit-Reset", "50", "RateLimit-Remaining", "0"), ``, 12 * time.Second, SourceRetryAfter},
		{"Retry-After beats retry-after-ms (OpenAI)", hdr("retry-after", "1", "retry-after-ms", "20"), ``, time.Second, SourceRetryAfter},
		{"Retry-After hand-built lower case", rawHdr("retry-after", "7"), ``, 7 * time.Second, SourceRetryAfter},

		// retry-after-ms.
		{"retry-after-ms", hdr("retry-after-ms", "1234.5"), ``, 1234500 * time.Microsecond, SourceRetryAfterMs},

		// IETF.
		{"RateLimit-Reset exhausted (Closient)", hdr("RateLimit-Limit", "300", "RateLimit-Remaining", "0", "RateLimit-Reset", "12"), ``, 12 * time.Second, SourceRateLimitReset},
		{"RateLimit-Reset without Remaining (Zendesk)", hdr("ratelimit-reset", "41"), ``, 41 * time.Second, SourceRateLimitReset},
		{"RateLimit-Reset with Remaining is not a wait", hdr("RateLimit-Remaining", "5", "RateLimit-Reset", "30"), ``, 0, SourceNone},
		{"RateLimit -07", hdr("RateLimit", "limit=100, remaining=0, reset=30"), ``, 30 * time.Second, SourceRateLimit},
		{"RateLimit -07 with remaining is not a wait", hdr("RateLimit", "limit=100, remaining=4, reset=30"), ``, 0, SourceNone},
		{"RateLimit -07 semicolons", hdr("RateLimit", "total=100; remaining=0; resets=41"), ``, 41 * time.Second, SourceRateLimit},
		{"RateLimit -08 exhausted window", hdr("RateLimit", `"min";r=0;t=30, "day";r=500;t=3000`), ``, 30 * time.Second, SourceRateLimit},
		{"RateLimit -08 longest exhausted window", hdr("RateLimit", `"min";r=0;t=30`, "RateLimit", `"day";r=0;t=600`), ``, 600 * time.Second, SourceRateLimit},
		{"RateLimit -08 nothing exhausted", hdr("RateLimit", `"p";r=50;t=30`), ``, 0, SourceNone},
		{"Beta-RateLimit (Jira)", hdr("Beta-RateLimit", `"default";r=0;t=15`), ``, 15 * time.Second, SourceRateLimit},

		// X-RateLimit-Reset.
		{"Clarabridge epoch seconds", hdr("Date", date, "X-RateLimit-Remaining", "0", "X-RateLimit-Reset", epoch(testNow.Add(30*time.Minute))), ``, 30 * time.Minute, SourceXRateLimitReset},
		{"epoch seconds from an upstream two hours ahead", hdr("Date", httpDate(ahead), "X-RateLimit-Remaining", "0", "X-RateLimit-Reset", epoch(ahead.Add(10*time.Minute))), ``, 10 * time.Minute, SourceXRateLimitReset},
		{"epoch seconds without Date", hdr("X-RateLimit-Reset", epoch(testNow.Add(time.Minute))), ``, time.Minute, SourceXRateLimitReset},
		{"epoch milliseconds", hdr("Date", date, "X-RateLimit-Reset", strconv.FormatInt(testNow.Add(2500*time.Millisecond).UnixMilli(), 10)), ``, 2500 * time.Millisecond, SourceXRateLimitReset},
		{"fractional epoch (Discord)", hdr("Date", date, "X-RateLimit-Remaining", "0", "X-RateLimit-Reset", epoch(testNow.Add(time.Second))+".25"), ``, 1250 * time.Millisecond, SourceXRateLimitReset},
		{"delta seconds", hdr("X-RateLimit-Reset", "45"), ``, 45 * time.Second, SourceXRateLimitReset},
		{"ISO time to the minute (Jira)", hdr("Date", date, "X-RateLimit-Reset", "2026-11-24T06:05Z"), ``, 5 * time.Minute, SourceXRateLimitReset},
		{"RFC 3339 with offset", hdr("Date", date, "X-RateLimit-Reset", "2026-11-24T07:01:30+01:00"), ``, 90 * time.Second, SourceXRateLimitReset},
		{"past epoch", hdr("Date", date, "X-RateLimit-Reset", epoch(testNow.Add(-time.Hour))), ``, 0, SourceXRateLimitReset},
		{"GitHub primary", hdr("Date", date, "x-ratelimit-limit", "5000", "x-ratelimit-remaining", "0", "x-ratelimit-used", "5000",
			"x-ratelimit-reset", epoch(testNow.Add(20*time.Minute)), "x-ratelimit-resource", "core"), ``, 20 * time.Minute, SourceXRateLimitReset},
		{"GitHub secondary uses retry-after, not the primary reset", hdr("Date", date, "retry-after", "60", "x-ratelimit-remaining", "4990",
			"x-ratelimit-reset", epoch(testNow.Add(40*time.Minute))), ``, time.Minute, SourceRetryAfter},
		{"GitHub secondary without retry-after has no wait", hdr("Date", date, "x-ratelimit-remaining", "4990",
			"x-ratelimit-reset", epoch(testNow.Add(40*time.Minute))), ``, 0, SourceNone},
		{"X (Twitter)", hdr("Date", date, "x-rate-limit-limit", "900", "x-rate-limit-remaining", "0", "x-rate-limit-reset", epoch(testNow.Add(15*time.Minute))), ``, 15 * time.Minute, SourceXRateLimitReset},
		{"garbage reset is skipped", hdr("X-RateLimit-Reset", "tomorrow", "X-RateLimit-Reset-After", "3"), ``, 3 * time.Second, SourceXRateLimitResetAfter},

		// Discord.
		{"X-RateLimit-Reset-After", hdr("X-RateLimit-Limit", "5", "X-RateLimit-Remaining", "0", "X-RateLimit-Reset-After", "1.234", "X-RateLimit-Bucket", "abcd1234"), ``, 1234 * time.Millisecond, SourceXRateLimitResetAfter},

		// OpenAI.
		{"OpenAI requests exhausted", hdr("x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "1.5s",
			"x-ratelimit-remaining-tokens", "100", "x-ratelimit-reset-tokens", "6m0s"), ``, 1500 * time.Millisecond, SourceOpenAIReset},
		{"OpenAI both exhausted: longest", hdr("x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "20ms",
			"x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "6m0s"), ``, 6 * time.Minute, SourceOpenAIReset},
		{"OpenAI compound duration", hdr("x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "1h2m3.5s"), ``, time.Hour + 2*time.Minute + 3500*time.Millisecond, SourceOpenAIReset},
		{"OpenAI milliseconds", hdr("x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "12ms"), ``, 12 * time.Millisecond, SourceOpenAIReset},
		{"OpenAI nothing exhausted is no wait", hdr("x-ratelimit-remaining-requests", "59", "x-ratelimit-reset-requests", "1s"), ``, 0, SourceNone},
		{"OpenAI garbage duration", hdr("x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "6 minutes"), ``, 0, SourceNone},

		// Anthropic.
		{"Anthropic tokens exhausted", hdr("Date", date, "anthropic-ratelimit-requests-remaining", "40",
			"anthropic-ratelimit-requests-reset", "2026-11-24T06:00:05Z",
			"anthropic-ratelimit-input-tokens-remaining", "0", "anthropic-ratelimit-input-tokens-reset", "2026-11-24T06:00:45Z"), ``, 45 * time.Second, SourceAnthropicReset},

		// Bodies.
		{"Closient body", nil, `{"error":{"code":"RATE_LIMITED","status":429,"details":{"retry_after_seconds":12}}}`, 12 * time.Second, SourceBodyRetryAfterSeconds},
		{"Discord body", nil, `{"message":"You are being rate limited.","retry_after":64.57,"global":false}`, 64570 * time.Millisecond, SourceBodyRetryAfter},
		{"Google RetryInfo", nil, `{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"35s"}]}}`, 35 * time.Second, SourceBodyRetryDelay},
		{"Google RetryInfo fraction", nil, `{"error":{"details":[{"retryDelay":"1.5s"}]}}`, 1500 * time.Millisecond, SourceBodyRetryDelay},
		{"retry_after_seconds preferred wherever it is", nil, `{"retry_after":1,"retryDelay":"2s","error":{"details":{"retry_after_seconds":3}}}`, 3 * time.Second, SourceBodyRetryAfterSeconds},
		{"numeric string in body", nil, `{"retry_after":"2.5"}`, 2500 * time.Millisecond, SourceBodyRetryAfter},
		{"truncated body", nil, `{"retry_after": 3.5, "message": "You are bei`, 3500 * time.Millisecond, SourceBodyRetryAfter},
		{"text body is not read", nil, `retry_after: 5`, 0, SourceNone},
		{"null value skipped", nil, `{"retry_after_seconds":null,"retry_after":4}`, 4 * time.Second, SourceBodyRetryAfter},
		{"body after 64 KiB is not read", nil, `{"pad":"` + strings.Repeat("x", MaxBody) + `","retry_after":4}`, 0, SourceNone},
		{"headers beat the body", hdr("Retry-After", "9"), `{"retry_after":64.57}`, 9 * time.Second, SourceRetryAfter},

		// Nothing usable.
		{"no signal (Clarifai)", hdr("Content-Type", "application/json"), `{"status":{"code":"CONN_THROTTLED"}}`, 0, SourceNone},
		{"nil header", nil, ``, 0, SourceNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, src, ok := Wait(tt.h, []byte(tt.body), testNow, b)
			if got != tt.want || src != tt.src || ok != (tt.src != SourceNone) {
				t.Errorf("Wait = %v, %q, %v; want %v, %q, %v", got, src, ok, tt.want, tt.src, tt.src != SourceNone)
			}
		})
	}
}

func TestWaitClampsToBounds(t *testing.T) {
	tests := []struct {
		name  string
		value string
		b     Bounds
		want  time.Duration
	}{
		{"below Min rises to Min", "0.2", Bounds{Min: time.Second, Max: time.Minute}, time.Second},
		{"above Max falls to Max", "7200", Bounds{Min: time.Second, Max: time.Hour}, time.Hour},
		{"negative falls to Min", "-30", Bounds{Min: 2 * time.Second, Max: time.Minute}, 2 * time.Second},
		{"negative Min counts as zero", "-30", Bounds{Min: -time.Hour, Max: time.Minute}, 0},
		{"Max below Min counts as Min", "5", Bounds{Min: 10 * time.Second, Max: time.Second}, 10 * time.Second},
		{"zero Bounds always zero", "5", Bounds{}, 0},
		{"huge values saturate", "9999999999999999999999", Bounds{Max: 1<<63 - 1}, 1<<63 - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, ok := Wait(hdr("Retry-After", tt.value), nil, testNow, tt.b)
			if !ok || got != tt.want {
				t.Errorf("Wait(Retry-After: %s, %+v) = %v, %v; want %v", tt.value, tt.b, got, ok, tt.want)
			}
		})
	}
}

func TestParseDurationAcceptsDurationStrings(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"6m0s", 6 * time.Minute, true},
		{"1.5s", 1500 * time.Millisecond, true},
		{"20ms", 20 * time.Millisecond, true},
		{"1h2m3.5s", time.Hour + 2*time.Minute + 3500*time.Millisecond, true},
		{"35s", 35 * time.Second, true},
		{"0.3s", 300 * time.Millisecond, true},
		{"1d", 24 * time.Hour, true},
		{"100us", 100 * time.Microsecond, true},
		{"100µs", 100 * time.Microsecond, true},
		{"7", 7 * time.Second, true},
		{`"2s"`, 2 * time.Second, true},
		{"-1s", -time.Second, true},
		{"", 0, false},
		{"s", 0, false},
		{"5x", 0, false},
		{"1..5s", 0, false},
		{"- 1s", 0, false},
		{"1s2", 0, false},
		{"NaNs", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseDuration(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseDuration(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
