package proxy

import (
	"net/http"
	"strconv"
	"time"
)

// rewriteThrottle turns the upstream's throttle into the one answer
// clients see: 429, Retry-After in whole seconds, the RateLimit headers,
// the vendor's body kept and its status in a header.
func rewriteThrottle(resp *http.Response, x *exchange, wait time.Duration) {
	secs := ceilSeconds(wait)
	h := resp.Header
	h.Set("X-RateLimit-Proxy-Upstream-Status", strconv.Itoa(resp.StatusCode))
	h.Set("Retry-After", itoa(secs))
	if x.id.limits != nil && x.id.limits.policy != "" {
		h.Set("RateLimit-Policy", x.id.limits.policy)
	}
	h.Set("RateLimit", `"upstream";r=0;t=`+itoa(secs))
	resp.StatusCode = http.StatusTooManyRequests
	resp.Status = "429 Too Many Requests"
}

// rateLimited is the proxy's own 429 for a request it will not hold.
func (s *Server) rateLimited(x *exchange) *http.Response {
	secs := ceilSeconds(x.res.Delay())
	limit, _ := x.id.limits.shownFor(x.res.Binding)
	h := http.Header{}
	h.Set("Retry-After", itoa(secs))
	msg := "quota of " + x.up.name + " exhausted for this key (" + limit.String() + "); retry after " + itoa(secs) + "s"
	name := limit.String()
	switch {
	case x.res.QueueFull:
		msg = "too many requests of this key are already waiting for " + x.up.name + " (max_queue); retry after " + itoa(secs) + "s"
	case x.res.Held:
		msg = x.up.name + " asked this key to slow down; retry after " + itoa(secs) + "s"
		name = "upstream"
	}
	if x.id.limits.policy != "" {
		h.Set("RateLimit-Policy", x.id.limits.policy)
	}
	if len(x.id.limits.shown) > 0 || x.res.Held {
		h.Set("RateLimit", strconv.Quote(name)+";r=0;t="+itoa(secs))
	}
	return jsonResponse(http.StatusTooManyRequests, h, errorBody{Error: errorDetail{
		Code: "RATE_LIMITED", Message: msg, RetryAfterSeconds: secs, Source: "proxy",
	}})
}
