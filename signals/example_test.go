package signals_test

import (
	"fmt"
	"net/http"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/signals"
)

func ExampleClassify() {
	rules := signals.DefaultRules()
	body := []byte(`{"error":"rate_limit_reached"}`) // Clarabridge Engage throttles with a 400
	v := signals.Classify(rules, http.StatusBadRequest, http.Header{}, body)
	fmt.Println(v.Throttle, v.Kind, v.Rule)

	stripe := []byte(`{"error":{"code":"lock_timeout","type":"invalid_request_error"}}`)
	v = signals.Classify(rules, http.StatusTooManyRequests, http.Header{}, stripe)
	fmt.Println(v.Throttle, v.Kind, v.Rule)
	// Output:
	// true quota marker:rate_limit_reached
	// false not_quota not_quota:lock_timeout
}

func ExampleWait() {
	now := time.Date(2026, 11, 24, 6, 0, 0, 0, time.UTC)
	h := http.Header{}
	h.Set("Date", now.Add(-time.Hour).Format(http.TimeFormat)) // upstream clock an hour behind
	h.Set("X-RateLimit-Remaining", "0")
	h.Set("X-RateLimit-Reset", fmt.Sprint(now.Add(-time.Hour+30*time.Second).Unix()))
	d, src, ok := signals.Wait(h, nil, now, signals.Bounds{Min: time.Second, Max: time.Hour})
	fmt.Println(d, src, ok)
	// Output: 30s x-ratelimit-reset true
}

func ExampleQuota() {
	h := http.Header{}
	h.Set("RateLimit-Policy", "300;w=60, 10000;w=86400")
	h.Set("RateLimit-Limit", "10000")
	h.Set("RateLimit-Remaining", "8")
	h.Set("RateLimit-Reset", "3600")
	for _, w := range signals.Quota(h, time.Now()) {
		fmt.Printf("limit=%d remaining=%d reset=%v period=%v\n", w.Limit, w.Remaining, w.Reset, w.Period)
	}
	// Output:
	// limit=300 remaining=-1 reset=-1ns period=1m0s
	// limit=10000 remaining=8 reset=1h0m0s period=24h0m0s
}
