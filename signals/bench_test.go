package signals

import (
	"strings"
	"testing"
	"time"
)

// A typical large 200 response: the cost every forwarded response pays.
func BenchmarkClassifyLarge200(b *testing.B) {
	body := []byte(`{"data":[` + strings.Repeat(`{"id":12345,"name":"product","sku":"abc","price":{"amount":"12.50","currency":"EUR"}},`, 2000) + `{}]}`)
	h := hdr("Content-Type", "application/json", "X-RateLimit-Remaining", "10")
	r := DefaultRules()
	b.SetBytes(int64(min(len(body), MaxBody)))
	for b.Loop() {
		Classify(r, 200, h, body)
	}
}

func BenchmarkClassify429(b *testing.B) {
	body := []byte(`{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded.","status":429,"details":{"retry_after_seconds":12}}}`)
	h := hdr("Retry-After", "12")
	r := DefaultRules()
	for b.Loop() {
		Classify(r, 429, h, body)
	}
}

func BenchmarkQuotaClosient(b *testing.B) {
	h := hdr("RateLimit-Policy", "300;w=60, 10000;w=86400",
		"RateLimit-Limit", "10000", "RateLimit-Remaining", "8", "RateLimit-Reset", "3600",
		"X-RateLimit-Limit", "10000", "X-RateLimit-Remaining", "8", "X-RateLimit-Reset", "1795503600")
	for b.Loop() {
		Quota(h, testNow)
	}
}

// Every element has a "code" key: the worst case for the BodyFields filter.
func BenchmarkClassifyLarge200ManyCodes(b *testing.B) {
	body := []byte(`{"data":[` + strings.Repeat(`{"id":12345,"code":"abc"},`, 3000) + `{}]}`)
	r := DefaultRules()
	b.SetBytes(int64(min(len(body), MaxBody)))
	for b.Loop() {
		Classify(r, 200, nil, body)
	}
}

func BenchmarkWait429(b *testing.B) {
	h := hdr("Retry-After", "12", "Date", httpDate(testNow), "RateLimit-Remaining", "0", "RateLimit-Reset", "12")
	for b.Loop() {
		Wait(h, nil, testNow, Bounds{Max: time.Hour})
	}
}

// An ordinary response without rate-limit headers.
func BenchmarkQuotaNoHeaders(b *testing.B) {
	h := hdr("Content-Type", "application/json", "Date", httpDate(testNow), "Server", "nginx",
		"Cache-Control", "no-store", "Content-Length", "1234", "Vary", "Accept-Encoding")
	for b.Loop() {
		Quota(h, testNow)
	}
}
