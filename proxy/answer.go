package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ratelimit-proxy/ratelimit-proxy/config"
)

// Every 429 the proxy gives, its own or a rewritten vendor throttle, has
// one uniform form: an integer Retry-After (>= 1), and, when the key has
// limits, RateLimit-Policy listing them and RateLimit naming one of them
// (never an item the policy does not list). On top of it, the upstream's
// answer section adds what the vendor's own SDKs look for.

// answerPolicy is the compiled answer section of an upstream.
type answerPolicy struct {
	headers []answerHeader
	body    map[string]any // leaves are templates ([]config.TemplatePart) or plain JSON values
}

type answerHeader struct {
	name  string // canonical
	value []config.TemplatePart
}

func compileAnswer(a config.Answer) answerPolicy {
	var p answerPolicy
	for name, v := range a.Headers {
		if v == "" {
			continue // dropped over a profile
		}
		parts, _ := config.ParseTemplate(v) // checked by config
		p.headers = append(p.headers, answerHeader{name: http.CanonicalHeaderKey(name), value: parts})
	}
	if len(a.Body) > 0 {
		p.body = compileBody(a.Body).(map[string]any)
	}
	return p
}

func compileBody(v any) any {
	switch v := v.(type) {
	case string:
		parts, _ := config.ParseTemplate(v)
		return parts
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = compileBody(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = compileBody(e)
		}
		return out
	}
	return v
}

// answerValues are what the placeholders of an answer stand for.
type answerValues struct {
	retryAfter int64  // whole seconds, rounded up, at least 1
	waitMs     int64  // the exact wait in milliseconds, rounded up, at least 1
	reset      int64  // Unix seconds when the wait ends, rounded up
	message    string // the proxy's explanation
}

func newAnswerValues(wait time.Duration, now time.Time, message string) answerValues {
	wait = max(wait, 0)
	end := now.Add(wait)
	reset := end.Unix()
	if end.Nanosecond() > 0 {
		reset++
	}
	return answerValues{
		retryAfter: ceilSeconds(wait),
		waitMs:     max(int64((wait+time.Millisecond-1)/time.Millisecond), 1),
		reset:      reset,
		message:    message,
	}
}

// number returns the value of a numeric placeholder.
func (v answerValues) number(name string) (int64, bool) {
	switch name {
	case config.PlaceholderRetryAfter:
		return v.retryAfter, true
	case config.PlaceholderRetryAfterMs:
		return v.waitMs, true
	case config.PlaceholderReset:
		return v.reset, true
	}
	return 0, false
}

func (v answerValues) text(parts []config.TemplatePart) string {
	var b strings.Builder
	for _, p := range parts {
		switch n, ok := v.number(p.Placeholder); {
		case p.Placeholder == "":
			b.WriteString(p.Text)
		case ok:
			b.WriteString(itoa(n))
		case p.Placeholder == config.PlaceholderMessage:
			b.WriteString(v.message)
		}
	}
	return b.String()
}

// value renders one compiled body value: a template that is exactly one
// numeric placeholder becomes that number.
func (v answerValues) value(c any) any {
	switch c := c.(type) {
	case []config.TemplatePart:
		if len(c) == 1 {
			if n, ok := v.number(c[0].Placeholder); ok {
				return n
			}
		}
		return v.text(c)
	case map[string]any:
		out := make(map[string]any, len(c))
		for k, e := range c {
			out[k] = v.value(e)
		}
		return out
	case []any:
		out := make([]any, len(c))
		for i, e := range c {
			out[i] = v.value(e)
		}
		return out
	}
	return c
}

// setHeaders sets the answer's headers on h, replacing any of the same name.
func (p *answerPolicy) setHeaders(h http.Header, v answerValues) {
	for _, ah := range p.headers {
		h.Set(ah.name, v.text(ah.value))
	}
}

// mergeJSON merges src into dst: objects key by key, other values replace.
func mergeJSON(dst, src map[string]any) {
	for k, s := range src {
		if sm, ok := s.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				mergeJSON(dm, sm)
				continue
			}
		}
		dst[k] = s
	}
}

// setRateLimit sets Retry-After, and, when the key has limits,
// RateLimit-Policy and a RateLimit that names item, one of them, as
// exhausted for secs. Without limits it invents no policy item.
func setRateLimit(h http.Header, limits *limitSet, item string, secs int64) {
	h.Set("Retry-After", itoa(secs))
	if limits == nil || limits.policy == "" {
		return
	}
	h.Set("RateLimit-Policy", limits.policy)
	h.Set("RateLimit", strconv.Quote(item)+";r=0;t="+itoa(secs))
}

// firstItem names the first of the key's limits, as RateLimit-Policy does.
func firstItem(limits *limitSet) string {
	if limits == nil || len(limits.shown) == 0 {
		return ""
	}
	return limits.shown[0].String()
}

// rewriteThrottle turns the upstream's throttle into the one answer
// clients see: 429, Retry-After in whole seconds, the RateLimit headers,
// the upstream's answer headers, a retry-after-ms of the upstream's
// replaced by the exact wait (never a stale value beside Retry-After), the
// vendor's body kept and its status in a header.
func rewriteThrottle(resp *http.Response, x *exchange, wait time.Duration) {
	v := newAnswerValues(wait, time.Now(), x.up.name+" asked this key to slow down; retry after "+itoa(ceilSeconds(wait))+"s")
	h := resp.Header
	h.Set("X-RateLimit-Proxy-Upstream-Status", strconv.Itoa(resp.StatusCode))
	if _, ok := h["Retry-After-Ms"]; ok {
		h.Set("Retry-After-Ms", itoa(v.waitMs))
	}
	setRateLimit(h, x.id.limits, firstItem(x.id.limits), v.retryAfter)
	x.up.answer.setHeaders(h, v)
	resp.StatusCode = http.StatusTooManyRequests
	resp.Status = "429 Too Many Requests"
}

// rateLimited is the proxy's own 429 for a request it will not hold.
func (s *Server) rateLimited(x *exchange) *http.Response {
	wait := x.res.Delay()
	secs := ceilSeconds(wait)
	limit, _ := x.id.limits.shownFor(x.res.Binding)
	msg := "quota of " + x.up.name + " exhausted for this key (" + limit.String() + "); retry after " + itoa(secs) + "s"
	switch {
	case x.decision == decisionQueueFull && !x.res.QueueFull:
		msg = "the proxy holds as many waiting requests as it may (resources.max_queued); retry after " + itoa(secs) + "s"
	case x.res.QueueFull:
		msg = "too many requests of this key are already waiting for " + x.up.name + " (max_queue); retry after " + itoa(secs) + "s"
	case x.res.Held:
		msg = x.up.name + " asked this key to slow down; retry after " + itoa(secs) + "s"
	}
	v := newAnswerValues(wait, time.Now(), msg)
	h := http.Header{}
	setRateLimit(h, x.id.limits, limit.String(), secs)
	x.up.answer.setHeaders(h, v)
	body := map[string]any{"error": map[string]any{
		"code": "RATE_LIMITED", "message": msg, "retry_after_seconds": secs, "source": "proxy",
	}}
	if x.up.answer.body != nil {
		mergeJSON(body, v.value(x.up.answer.body).(map[string]any))
	}
	return jsonResponse(http.StatusTooManyRequests, h, body)
}
