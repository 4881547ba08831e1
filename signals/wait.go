package signals

import (
	"bytes"
	"net/http"
	"time"
)

// Bounds limits the wait that Wait returns. A Min below zero counts as zero
// and a Max below Min counts as Min, so the zero Bounds always yields 0.
type Bounds struct {
	Min time.Duration
	Max time.Duration
}

// clamp returns d limited to the (normalised) bounds.
func (b Bounds) clamp(d time.Duration) time.Duration {
	lo, hi := b.Min, b.Max
	if lo < 0 {
		lo = 0
	}
	if hi < lo {
		hi = lo
	}
	return min(max(d, lo), hi)
}

// Source names the signal a wait was derived from. Its value is a short
// lower-case string fit for logs; the empty Source means none.
type Source string

// The sources Wait understands, in the order it tries them.
const (
	SourceNone                  Source = ""
	SourceRetryAfter            Source = "retry-after"
	SourceRetryAfterMs          Source = "retry-after-ms"
	SourceRateLimitReset        Source = "ratelimit-reset"
	SourceRateLimit             Source = "ratelimit"
	SourceXRateLimitReset       Source = "x-ratelimit-reset"
	SourceXRateLimitResetAfter  Source = "x-ratelimit-reset-after"
	SourceOpenAIReset           Source = "x-ratelimit-reset-requests/tokens"
	SourceAnthropicReset        Source = "anthropic-ratelimit-reset"
	SourceBodyRetryAfterSeconds Source = "body:retry_after_seconds"
	SourceBodyRetryAfter        Source = "body:retry_after"
	SourceBodyRetryDelay        Source = "body:retryDelay"
)

// waitOrder is the documented header order of Wait. Read only.
var waitOrder = [...]Source{
	SourceRetryAfter,
	SourceRetryAfterMs,
	SourceRateLimitReset,
	SourceRateLimit,
	SourceXRateLimitReset,
	SourceXRateLimitResetAfter,
	SourceOpenAIReset,
	SourceAnthropicReset,
}

// derive returns the raw wait that the header source gives, or reports
// that it is absent or unusable.
func derive(src Source, hs *headers, c clock) (time.Duration, bool) {
	switch src {
	case SourceRetryAfter:
		return retryAfter(hs, c)
	case SourceRetryAfterMs:
		return retryAfterMs(hs)
	case SourceRateLimitReset:
		return rateLimitReset(hs, c)
	case SourceRateLimit:
		return rateLimitField(hs)
	case SourceXRateLimitReset:
		return xRateLimitReset(hs, c)
	case SourceXRateLimitResetAfter:
		return xRateLimitResetAfter(hs)
	case SourceOpenAIReset:
		return openAIReset(hs)
	case SourceAnthropicReset:
		return anthropicReset(hs, c)
	}
	return 0, false
}

// Wait derives how long to wait before retrying from an upstream response
// that was a throttle. It takes the first usable signal in this order:
//
//  1. Retry-After: seconds (integer or fraction) or an HTTP-date;
//  2. retry-after-ms: milliseconds;
//  3. RateLimit-Reset (else Beta-RateLimit-Reset): delta seconds (IETF
//     drafts up to -06); a number above 1e9 is read as an epoch, as in 5;
//  4. RateLimit (else Beta-RateLimit): "limit=, remaining=, reset=" (draft
//     -07) or structured `"name";r=0;t=30` items (draft -08 on): the
//     largest t among the items whose r is 0;
//  5. X-RateLimit-Reset, then x-rate-limit-reset (X/Twitter): a bare number
//     is epoch milliseconds above 1e12, epoch seconds above 1e9, else delta
//     seconds; RFC 3339 and ISO 8601 times (Jira) are accepted;
//  6. X-RateLimit-Reset-After: seconds (Discord);
//  7. x-ratelimit-reset-requests / -tokens: duration strings such as
//     "6m0s", "1.5s", "20ms" (OpenAI): the largest among exhausted ones;
//  8. anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset:
//     RFC 3339 times: the largest among exhausted ones;
//  9. JSON body (first MaxBody bytes): retry_after_seconds (Closient
//     error.details), then retry_after (Discord, float seconds), then
//     retryDelay (Google RetryInfo, "35s"), wherever they are nested.
//
// A reset (steps 3 to 8) counts only when its window is exhausted: it is
// skipped when the matching Remaining header reports more than zero, as a
// GitHub secondary limit does, whose primary reset may be an hour away.
// Absolute times (HTTP-dates, epochs, RFC 3339) are turned into waits
// from now: when the local clock agrees with the response Date header
// (Date <= now < Date+1s, the header's resolution), the wait is t-now,
// exact; otherwise the upstream's clock is skewed and the wait is t-Date,
// corrected by the skew Date shows, never ending before the upstream's own
// t and at most a second (plus the response's transit) after it. Without a
// Date that parses, the wait is t-now.
//
// Unparsable values are skipped, not trusted, and the next signal is
// tried; NaN counts as unparsable. Parsable but absurd values (negative,
// past dates, infinite such as 1e999, years away) are clamped to b. When
// ok is true the wait lies within b (see Bounds); when no signal is usable
// it returns 0, SourceNone, false. Wait never panics.
func Wait(h http.Header, body []byte, now time.Time, b Bounds) (wait time.Duration, src Source, ok bool) {
	var hs headers
	hs.fill(h)
	c := newClock(&hs, now)
	for _, s := range waitOrder {
		if !hs.any {
			break
		}
		if d, ok := derive(s, &hs, c); ok {
			return b.clamp(d), s, true
		}
	}
	if d, s, ok := bodyWait(head(body)); ok {
		return b.clamp(d), s, true
	}
	return 0, SourceNone, false
}

func retryAfter(hs *headers, c clock) (time.Duration, bool) {
	for _, v := range hs.values("retry-after") {
		if d, ok := parseSeconds(v); ok {
			return d, true
		}
		if t, ok := parseTime(v); ok {
			return c.until(t), true
		}
	}
	return 0, false
}

func retryAfterMs(hs *headers) (time.Duration, bool) {
	for _, v := range hs.values("retry-after-ms") {
		if f, ok := parseNumber(v); ok {
			return secondsToDuration(f / 1000), true
		}
	}
	return 0, false
}

// exhausted reports whether the count in header name is not known to be
// above zero: it is 0, absent or unparsable.
func exhausted(hs *headers, name string) bool {
	n, ok := parseCount(hs.get(name))
	return !ok || n == 0
}

func rateLimitReset(hs *headers, c clock) (time.Duration, bool) {
	for _, prefix := range [...]string{"ratelimit-", "beta-ratelimit-"} {
		v := hs.get(prefix + "reset")
		if v == "" {
			continue
		}
		if !exhausted(hs, prefix+"remaining") {
			return 0, false
		}
		return resetValue(v, c)
	}
	return 0, false
}

func rateLimitField(hs *headers) (time.Duration, bool) {
	for _, name := range [...]string{"ratelimit", "beta-ratelimit"} {
		v := hs.joined(name)
		if v == "" {
			continue
		}
		return longestExhausted(parseRateLimitField(v))
	}
	return 0, false
}

// longestExhausted returns the largest reset among the windows whose
// remaining count is zero or unknown.
func longestExhausted(ws []Window) (time.Duration, bool) {
	var d time.Duration
	found := false
	for _, w := range ws {
		if w.Reset < 0 || w.Remaining > 0 {
			continue
		}
		if !found || w.Reset > d {
			d = w.Reset
		}
		found = true
	}
	return d, found
}

func xRateLimitReset(hs *headers, c clock) (time.Duration, bool) {
	for _, prefix := range [...]string{"x-ratelimit-", "x-rate-limit-"} {
		v := hs.get(prefix + "reset")
		if v == "" || !exhausted(hs, prefix+"remaining") {
			continue
		}
		if d, ok := resetValue(v, c); ok {
			return d, true
		}
	}
	return 0, false
}

func xRateLimitResetAfter(hs *headers) (time.Duration, bool) {
	v := hs.get("x-ratelimit-reset-after")
	if v == "" || !exhausted(hs, "x-ratelimit-remaining") {
		return 0, false
	}
	return parseSeconds(v)
}

func openAIReset(hs *headers) (time.Duration, bool) {
	var ws []Window
	for _, dim := range [...]string{"requests", "tokens"} {
		w := Window{Remaining: Unknown, Reset: Unknown}
		if n, ok := parseCount(hs.get("x-ratelimit-remaining-" + dim)); ok {
			w.Remaining = n
		}
		if d, ok := parseDuration(hs.get("x-ratelimit-reset-" + dim)); ok {
			w.Reset = max(d, 0)
		}
		ws = append(ws, w)
	}
	return longestExhausted(ws)
}

func anthropicReset(hs *headers, c clock) (time.Duration, bool) {
	var ws []Window
	for _, dim := range anthropicDims {
		prefix := "anthropic-ratelimit-" + dim + "-"
		w := Window{Remaining: Unknown, Reset: Unknown}
		if n, ok := parseCount(hs.get(prefix + "remaining")); ok {
			w.Remaining = n
		}
		if d, ok := resetValue(hs.get(prefix+"reset"), c); ok {
			w.Reset = max(d, 0)
		}
		ws = append(ws, w)
	}
	return longestExhausted(ws)
}

// bodyWait reads retry_after_seconds, retry_after and retryDelay from a
// JSON body, in that order of preference.
func bodyWait(body []byte) (time.Duration, Source, bool) {
	if !bytes.Contains(body, []byte("retry_after")) && !bytes.Contains(body, []byte("retryDelay")) {
		return 0, SourceNone, false
	}
	var after, delay time.Duration
	var haveAfter, haveDelay bool
	var seconds time.Duration
	var haveSeconds bool
	walkJSON(body, func(path []string, v any) bool {
		if len(path) == 0 {
			return false
		}
		switch path[len(path)-1] {
		case "retry_after_seconds":
			if d, ok := parseSeconds(jsonText(v)); ok {
				seconds, haveSeconds = d, true
				return true
			}
		case "retry_after":
			if !haveAfter {
				after, haveAfter = parseSeconds(jsonText(v))
			}
		case "retryDelay":
			if !haveDelay {
				delay, haveDelay = parseDuration(jsonText(v))
			}
		}
		return false
	})
	switch {
	case haveSeconds:
		return seconds, SourceBodyRetryAfterSeconds, true
	case haveAfter:
		return after, SourceBodyRetryAfter, true
	case haveDelay:
		return delay, SourceBodyRetryDelay, true
	}
	return 0, SourceNone, false
}
