package signals

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// hdr builds a header with Add, as net/http would (names canonicalised).
func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// rawHdr builds a header map by hand, keeping names exactly as written, as
// a careless caller or a test double might.
func rawHdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = append(h[kv[i]], kv[i+1])
	}
	return h
}

func TestClassifyRecognisesVendorThrottles(t *testing.T) {
	bigPrefix := `{"data":"` + strings.Repeat("x", 2*MaxBody) + `"}`
	tests := []struct {
		name   string
		status int
		h      http.Header
		body   string
		kind   Kind
		rule   string
	}{
		// Plain 429s, whatever the body.
		{"Clari 429 with Retry-After", 429, hdr("Retry-After", "5"), ``, KindQuota, "status:429"},
		{"Closient 429 envelope", 429, hdr("Retry-After", "12"),
			`{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded.","status":429,"details":{"retry_after_seconds":12}}}`,
			KindQuota, "status:429"},
		{"GitHub 429 secondary", 429, hdr("Retry-After", "60"), `{"message":"You have exceeded a secondary rate limit."}`, KindQuota, "status:429"},
		{"OpenAI 429 rate limit", 429, hdr("Retry-After", "1"),
			`{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}`, KindQuota, "status:429"},
		{"Anthropic 429", 429, hdr("Retry-After", "3"),
			`{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}`,
			KindQuota, "status:429"},
		{"Google 429 RESOURCE_EXHAUSTED", 429, nil,
			`{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}`, KindQuota, "status:429"},
		{"Shopify REST 429", 429, hdr("Retry-After", "2.0"), `{"errors":"Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service."}`, KindQuota, "status:429"},
		{"HubSpot 429", 429, nil, `{"status":"error","message":"You have reached your secondly limit.","errorType":"RATE_LIMIT","policyName":"SECONDLY"}`, KindQuota, "status:429"},
		{"Slack 429", 429, hdr("Retry-After", "30"), `{"ok":false,"error":"ratelimited"}`, KindQuota, "status:429"},
		{"Discord 429", 429, hdr("Retry-After", "65", "X-RateLimit-Scope", "user"), `{"message":"You are being rate limited.","retry_after":64.57,"global":false}`, KindQuota, "status:429"},
		{"X 429 code 88", 429, nil, `{"errors":[{"code":88,"message":"Rate limit exceeded"}]}`, KindQuota, "status:429"},
		{"Zendesk 429 text/plain", 429, hdr("Content-Type", "text/plain", "Retry-After", "93"), `Too Many Requests`, KindQuota, "status:429"},
		{"Jira 429", 429, hdr("Retry-After", "5", "RateLimit-Reason", "jira-quota-tenant-based"), ``, KindQuota, "status:429"},
		{"Notion 429", 429, hdr("Retry-After", "1"), `{"object":"error","status":429,"code":"rate_limited","message":"You have been rate limited."}`, KindQuota, "status:429"},
		{"Twilio 429", 429, nil, `{"code":20429,"message":"Too Many Requests","status":429}`, KindQuota, "status:429"},
		{"Stripe 429 rate limit", 429, nil, `{"error":{"message":"Too many requests hit the API too quickly.","type":"invalid_request_error","code":"rate_limit"}}`, KindQuota, "status:429"},

		// 400 and 403 throttle only with a marker.
		{"Clarabridge 400 rate_limit_reached", 400, hdr("X-RateLimit-Limit", "350", "X-RateLimit-Remaining", "0"),
			`{"error":"rate_limit_reached"}`, KindQuota, "header:X-RateLimit-Remaining=0"},
		{"Clarabridge 400 marker without headers", 400, nil, `{"meta":{"code":400,"error_type":"rate_limit_reached","error_message":"Rate limit reached."}}`, KindQuota, "marker:rate_limit_reached"},
		{"Clarabridge 400 validation error", 400, nil, `{"error":"invalid_parameter","error_description":"bad id"}`, KindNone, ""},
		{"GitHub 403 secondary rate limit", 403, hdr("Retry-After", "60", "X-RateLimit-Remaining", "4990"),
			`{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com/rest"}`,
			KindQuota, "marker:secondary rate limit"},
		{"GitHub 403 primary remaining 0", 403, hdr("x-ratelimit-limit", "5000", "x-ratelimit-remaining", "0", "x-ratelimit-reset", "1795500000"),
			`{"message":"API rate limit exceeded for user ID 1."}`, KindQuota, "header:X-RateLimit-Remaining=0"},
		{"GitHub 403 permission error", 403, hdr("x-ratelimit-remaining", "4999"),
			`{"message":"Resource not accessible by integration","documentation_url":"https://docs.github.com/rest"}`, KindNone, ""},
		{"Google 403 rateLimitExceeded", 403, nil,
			`{"error":{"errors":[{"domain":"usageLimits","reason":"rateLimitExceeded","message":"Rate Limit Exceeded"}],"code":403,"message":"Rate Limit Exceeded"}}`,
			KindQuota, "marker:rate limit exceeded"},
		{"Google 403 userRateLimitExceeded", 403, nil,
			`{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"User Rate Limit Exceeded"}],"code":403}}`,
			KindQuota, "marker:rate limit exceeded"},
		{"Google 403 reason only", 403, nil, `{"error":{"errors":[{"reason":"userRateLimitExceeded"}]}}`, KindQuota, "marker:userRateLimitExceeded"},
		{"Google 403 insufficient permissions", 403, nil,
			`{"error":{"errors":[{"domain":"global","reason":"insufficientPermissions","message":"Insufficient Permission"}],"code":403}}`, KindNone, ""},
		{"Google 403 storage quota is not a rate limit", 403, nil,
			`{"error":{"errors":[{"reason":"storageQuotaExceeded","message":"The user's Drive storage quota has been exceeded."}],"code":403}}`, KindNone, ""},
		{"Salesforce 403 REQUEST_LIMIT_EXCEEDED", 403, hdr("Sforce-Limit-Info", "api-usage=5000/5000"),
			`[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]`, KindQuota, "marker:REQUEST_LIMIT_EXCEEDED"},
		{"Salesforce 403 insufficient access", 403, nil, `[{"message":"insufficient access rights on object id","errorCode":"INSUFFICIENT_ACCESS_OR_READONLY"}]`, KindNone, ""},
		{"old Stripe 400 rate limit", 400, nil, `{"error":{"type":"rate_limit_error","message":"Too many requests"}}`, KindQuota, "marker:rate_limit_error"},
		{"403 text/plain marker", 403, hdr("Content-Type", "text/plain"), "API rate limit exceeded", KindQuota, "marker:rate limit exceeded"},

		// Throttles inside other statuses, 200 included.
		{"Clarifai 200 CONN_THROTTLED", 200, nil,
			`{"status":{"code":"CONN_THROTTLED","description":"Making too many requests","details":"exceeded limit of 15 requests per second","req_id":"abc"},"outputs":[]}`,
			KindQuota, "field:status.code=CONN_THROTTLED"},
		{"Clarifai 429 numeric 11005", 429, nil, `{"status":{"code":11005,"description":"Making too many requests"}}`, KindQuota, "field:status.code=11005"},
		{"Clarifai 402 hourly 11003", 402, nil, `{"status":{"code":11003,"description":"hourly limit"}}`, KindQuota, "field:status.code=11003"},
		{"Clarifai monthly as string", 400, nil, `{"status":{"code":"CONN_EXCEED_MONTHLY_LIMIT"}}`, KindQuota, "field:status.code=CONN_EXCEED_MONTHLY_LIMIT"},
		{"Clarifai account limits 11006", 400, nil, `{"status":{"code":"11006"}}`, KindQuota, "field:status.code=11006"},
		{"Clarifai success", 200, nil, `{"status":{"code":10000,"description":"Ok"},"outputs":[{"id":"11005"}]}`, KindNone, ""},
		{"Clarifai per-output status is not the request's", 200, nil,
			`{"status":{"code":10000},"outputs":[{"status":{"code":11005}}]}`, KindNone, ""},
		{"Clarifai truncated body", 200, nil, `{"status":{"code":"CONN_THROTTLED","description":"Making too m`, KindQuota, "field:status.code=CONN_THROTTLED"},
		{"escaped value still matches", 200, nil, `{"status":{"code":"CONN_\u0054HROTTLED"}}`, KindQuota, "field:status.code=CONN_THROTTLED"},
		{"escaped key is not seen (documented)", 200, nil, `{"status":{"co\u0064e":"CONN_THROTTLED"}}`, KindNone, ""},
		{"value compared ignoring ASCII case only", 200, nil, `{"errors":[{"extensions":{"code":"throttled"}}]}`, KindQuota, "field:errors[].extensions.code=THROTTLED"},
		{"Clarifai value in text is not JSON", 200, hdr("Content-Type", "text/plain"), `status.code CONN_THROTTLED`, KindNone, ""},
		{"Shopify GraphQL 200 THROTTLED", 200, nil,
			`{"errors":[{"message":"Throttled","extensions":{"code":"THROTTLED","documentation":"https://shopify.dev/api/usage/rate-limits"}}],"extensions":{"cost":{"requestedQueryCost":202,"actualQueryCost":null,"throttleStatus":{"maximumAvailable":1000.0,"currentlyAvailable":100,"restoreRate":50.0}}}}`,
			KindQuota, "field:errors[].extensions.code=THROTTLED"},
		{"Shopify GraphQL other error", 200, nil, `{"errors":[{"message":"Field 'x' doesn't exist","extensions":{"code":"undefinedField"}}]}`, KindNone, ""},

		// Not quota: contention and billing.
		{"Stripe 429 lock_timeout", 429, nil,
			`{"error":{"code":"lock_timeout","message":"This object cannot be accessed right now because another API request or Stripe process is currently accessing it.","type":"invalid_request_error"}}`,
			KindNotQuota, "not_quota:lock_timeout"},
		{"OpenAI 429 insufficient_quota", 429, hdr("Retry-After", "20"),
			`{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","code":"insufficient_quota"}}`,
			KindNotQuota, "not_quota:insufficient_quota"},
		{"200 mentioning lock_timeout", 200, nil, `{"note":"lock_timeout"}`, KindNone, ""},

		// Overload and 503.
		{"Anthropic 529 overloaded", 529, nil, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`, KindOverload, "status:529"},
		{"Notion 529", 529, hdr("Retry-After", "1"), ``, KindOverload, "status:529"},
		{"503 with Retry-After", 503, hdr("Retry-After", "120"), `Service Unavailable`, KindOverload, "status:503+retry-after"},
		{"503 without Retry-After", 503, nil, `Service Unavailable`, KindNone, ""},
		{"Salesforce Chatter 503 with marker", 503, nil, `[{"errorCode":"REQUEST_LIMIT_EXCEEDED","message":"Rate Limit Exceeded"}]`, KindQuota, "marker:rate limit exceeded"},

		// Ordinary responses.
		{"200 plain", 200, hdr("X-RateLimit-Remaining", "0"), `{"data":[]}`, KindNone, ""},
		{"500 mentioning rate limit", 500, nil, `rate limit exceeded`, KindNone, ""},
		{"404", 404, nil, `not found`, KindNone, ""},

		// Header case and body size.
		{"hand-built lower-case header", 403, rawHdr("x-ratelimit-remaining", "0"), `{}`, KindQuota, "header:X-RateLimit-Remaining=0"},
		{"odd-case header via Add", 403, hdr("X-RATELIMIT-REMAINING", " 0 "), ``, KindQuota, "header:X-RateLimit-Remaining=0"},
		{"marker after 64 KiB is not read", 403, nil, bigPrefix + `rate_limit_reached`, KindNone, ""},
		{"marker in a huge body's head", 400, nil, `{"error":"rate_limit_reached"}` + bigPrefix, KindQuota, "marker:rate_limit_reached"},
		{"garbage body", 403, nil, "\x00\xff{{{[[[\"", KindNone, ""},
	}
	r := DefaultRules()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Classify(r, tt.status, tt.h, []byte(tt.body))
			want := Verdict{Throttle: tt.kind == KindQuota || tt.kind == KindOverload, Kind: tt.kind, Rule: tt.rule}
			if v != want {
				t.Errorf("Classify(%d) = %+v, want %+v", tt.status, v, want)
			}
		})
	}
}

func TestClassifyFollowsConfiguredRules(t *testing.T) {
	tests := []struct {
		name   string
		rules  Rules
		status int
		h      http.Header
		body   string
		want   Verdict
	}{
		{"zero Rules recognise nothing", Rules{}, 429, nil, `{"error":"rate_limit_reached"}`, Verdict{}},
		{"empty markers never match", Rules{MarkerStatuses: []int{403}, BodyMarkers: []string{""}, NotQuota: []string{""},
			HeaderMarkers: []HeaderMarker{{Name: " "}}}, 403, hdr("X", "1"), `x`, Verdict{}},
		{"Clari 400 quota marker", Rules{MarkerStatuses: []int{400}, BodyMarkers: []string{"export quota"}}, 400, nil,
			`{"message":"Export Quota exhausted"}`, Verdict{true, KindQuota, "marker:export quota"}},
		{"header marker with empty value means present", Rules{MarkerStatuses: []int{403}, HeaderMarkers: []HeaderMarker{{Name: "retry-after"}}},
			403, hdr("Retry-After", "60"), ``, Verdict{true, KindQuota, "header:retry-after"}},
		{"header marker compares numbers", Rules{MarkerStatuses: []int{403}, HeaderMarkers: []HeaderMarker{{Name: "X-RateLimit-Remaining", Value: "0"}}},
			403, hdr("X-RateLimit-Remaining", "0.0"), ``, Verdict{true, KindQuota, "header:X-RateLimit-Remaining=0"}},
		{"body field with numeric value", Rules{BodyFields: []BodyField{{Path: "error.code", Values: []string{"88"}}}},
			200, nil, `{"error":{"code":88}}`, Verdict{true, KindQuota, "field:error.code=88"}},
		{"body field folds ASCII case only", Rules{BodyFields: []BodyField{{Path: "state", Values: []string{"BLOCK"}}}},
			200, nil, "{\"state\":\"bloc\u212a\"}", Verdict{}}, // U+212A KELVIN SIGN folds to k in Unicode
		{"body field with empty path ignored", Rules{BodyFields: []BodyField{{Path: "", Values: []string{"88"}}}},
			200, nil, `88`, Verdict{}},
		{"custom overload status", Rules{OverloadStatuses: []int{503}}, 503, nil, ``, Verdict{true, KindOverload, "status:503"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.rules, tt.status, tt.h, []byte(tt.body)); got != tt.want {
				t.Errorf("Classify = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestClassifyRuleNeverQuotesTheResponse(t *testing.T) {
	secret := "sk-live-SECRET-TOKEN-123"
	h := hdr("X-RateLimit-Remaining", secret, "Authorization", "Bearer "+secret, "Retry-After", secret)
	bodies := []string{secret, `{"status":{"code":"` + secret + `"}}`, `{"error":"rate_limit_reached","token":"` + secret + `"}`}
	for _, status := range []int{200, 400, 403, 429, 503, 529} {
		for _, body := range bodies {
			v := Classify(DefaultRules(), status, h, []byte(body))
			if strings.Contains(v.Rule, "SECRET") {
				t.Errorf("Classify(%d, %q).Rule = %q quotes the response", status, body, v.Rule)
			}
		}
	}
}

func TestDefaultRulesReturnsAFreshValue(t *testing.T) {
	a := DefaultRules()
	a.Statuses[0] = 418
	a.BodyMarkers[0] = "changed"
	b := DefaultRules()
	if b.Statuses[0] != 429 || b.BodyMarkers[0] == "changed" {
		t.Errorf("DefaultRules shares memory between calls: %v %v", b.Statuses, b.BodyMarkers[0])
	}
}

func TestClassifyDoesNotModifyTheBody(t *testing.T) {
	body := []byte(`{"error":"RATE_LIMIT_REACHED"}`)
	orig := bytes.Clone(body)
	Classify(DefaultRules(), 400, nil, body)
	if !bytes.Equal(body, orig) {
		t.Errorf("body changed to %q", body)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{KindNone: "none", KindQuota: "quota", KindOverload: "overload", KindNotQuota: "not_quota", Kind(9): "kind(9)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
}
