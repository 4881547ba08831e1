package signals

import (
	"net/http"
	"strings"
	"time"
)

// Unknown marks a Window count or duration that the upstream did not report.
const Unknown = -1

// MaxReset is the largest Reset that Quota reports; later resets are
// clamped to it.
const MaxReset = 31 * 24 * time.Hour

// MaxPeriod is the largest Period that Quota accepts; a longer or
// non-positive window length is reported as Unknown.
const MaxPeriod = 366 * 24 * time.Hour

// Window is one quota window that an upstream reported.
type Window struct {
	// Name is the policy or dimension name: "requests", "tokens",
	// "input-tokens", "daily", "secondly", "api-usage", an IETF policy
	// name. Empty when the upstream gives none.
	Name string
	// Bucket is the upstream's own partition of the quota, such as
	// GitHub's x-ratelimit-resource ("core", "search") or Discord's
	// X-RateLimit-Bucket. Learned state should be keyed by credential and
	// Bucket. Empty when none.
	Bucket string
	// Limit is the number of units (requests, tokens) the window allows,
	// or Unknown. Never negative otherwise.
	Limit int64
	// Remaining is the number of units left, or Unknown. Never negative
	// otherwise, and never above a known Limit.
	Remaining int64
	// Reset is the time from now until the window resets (absolute
	// resets are resolved as Wait resolves them), or Unknown. Otherwise it
	// lies within [0, MaxReset].
	Reset time.Duration
	// Period is the window length, or Unknown. Otherwise it lies within
	// (0, MaxPeriod].
	Period time.Duration
	// Refill reports a bucket that refills continuously (OpenAI,
	// Anthropic, Shopify): Reset is the time until it is full again, not
	// the time until the next unit is available.
	Refill bool
	// Dialect names the header family that reported the window, for logs:
	// "ietf", "x-ratelimit", "x-rate-limit", "openai", "anthropic",
	// "shopify", "salesforce", "hubspot".
	Dialect string
}

func newWindow(dialect string) Window {
	return Window{Limit: Unknown, Remaining: Unknown, Reset: Unknown, Period: Unknown, Dialect: dialect}
}

func (w Window) empty() bool {
	return w.Limit < 0 && w.Remaining < 0 && w.Reset < 0
}

// normalised returns w with every field within its documented range.
func (w Window) normalised() Window {
	if w.Limit < 0 {
		w.Limit = Unknown
	}
	if w.Remaining < 0 {
		w.Remaining = Unknown
	}
	if w.Limit >= 0 && w.Remaining > w.Limit {
		w.Remaining = w.Limit
	}
	if w.Reset < 0 {
		w.Reset = Unknown
	} else {
		w.Reset = min(w.Reset, MaxReset)
	}
	if w.Period <= 0 || w.Period > MaxPeriod {
		w.Period = Unknown
	}
	return w
}

// anthropicDims are the dimensions of Anthropic's rate-limit headers.
var anthropicDims = [...]string{"requests", "tokens", "input-tokens", "output-tokens"}

// Quota returns the quota windows that the response headers report, in the
// order of the dialects below, or nil. It reads:
//
//   - IETF: RateLimit-Policy `300;w=60, 10000;w=86400` (drafts -05/-06, with
//     any extra parameters) or `"p";q=100;w=60` (-08 on); RateLimit
//     `limit=, remaining=, reset=` (-07) or `"p";r=50;t=30` (-08 on);
//     RateLimit-Limit/-Remaining/-Reset; and the Beta-RateLimit forms (Jira);
//   - X-RateLimit-Limit/-Remaining/-Used/-Reset/-Reset-After, with
//     X-RateLimit-Time as the period (Clarabridge) and X-RateLimit-Resource
//     (GitHub) or X-RateLimit-Bucket (Discord) as the Bucket;
//   - x-rate-limit-limit/-remaining/-reset (X/Twitter), X-Rate-Limit (Zendesk);
//   - x-ratelimit-{limit,remaining,reset}-{requests,tokens} (OpenAI);
//   - anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
//     {limit,remaining,reset} (Anthropic);
//   - X-Shopify-Shop-Api-Call-Limit `32/40`, used/capacity (Shopify);
//   - Sforce-Limit-Info `api-usage=18/5000`, used/limit per 24 h (Salesforce);
//   - X-HubSpot-RateLimit-Daily/-Daily-Remaining, -Secondly/-Secondly-Remaining
//     and -Max/-Remaining/-Interval-Milliseconds (HubSpot).
//
// Header names match ignoring case. Reset values follow the rules of Wait
// (absolute times become waits from now, read against the response Date
// header). Windows that describe the same limit are merged into
// the earlier one: a named window joins the one earlier window of that name
// (a draft -08 RateLimit item its policy); an unnamed window (RateLimit-Limit,
// X-RateLimit-Limit) joins the one earlier window with the same Limit and
// Bucket and no other period; the result keeps the lower Remaining and the
// later Reset. A window that fits several stays apart.
// Garbage values are ignored, never guessed at; counts are never negative;
// at most 16 members of any list header are read. Quota does not judge the
// status: the caller should not learn from a KindOverload or KindNotQuota
// response. It never panics.
func Quota(h http.Header, now time.Time) []Window {
	var hs headers
	hs.fill(h)
	if !hs.any {
		return nil
	}
	c := newClock(&hs, now)
	var ws []Window
	ws = appendIETF(ws, &hs, c)
	ws = appendX(ws, &hs, c, "x-ratelimit-", "x-ratelimit")
	ws = appendX(ws, &hs, c, "x-rate-limit-", "x-rate-limit")
	ws = appendOpenAI(ws, &hs)
	ws = appendAnthropic(ws, &hs, c)
	ws = appendShopify(ws, &hs)
	ws = appendSalesforce(ws, &hs)
	ws = appendHubSpot(ws, &hs)
	return merge(ws)
}

// count parses the header name as a count, or returns Unknown.
func count(hs *headers, name string) int64 {
	if n, ok := parseCount(hs.get(name)); ok {
		return n
	}
	return Unknown
}

// period parses a window length in seconds, or returns Unknown.
func period(s string) time.Duration {
	if d, ok := parseSeconds(s); ok && d > 0 && d <= MaxPeriod {
		return d
	}
	return Unknown
}

// reset parses a reset value (see resetValue), or returns Unknown. A reset
// in the past is 0.
func reset(s string, c clock) time.Duration {
	if d, ok := resetValue(s, c); ok {
		return max(d, 0)
	}
	return Unknown
}

func appendIETF(ws []Window, hs *headers, c clock) []Window {
	prefix := "ratelimit"
	if hs.get("ratelimit-policy") == "" && hs.get("ratelimit") == "" && hs.get("ratelimit-limit") == "" &&
		hs.get("ratelimit-remaining") == "" && hs.get("ratelimit-reset") == "" {
		prefix = "beta-ratelimit"
	}
	if v := hs.joined(prefix + "-policy"); v != "" {
		ws = append(ws, parsePolicy(v)...)
	}
	if v := hs.joined(prefix); v != "" {
		ws = append(ws, parseRateLimitField(v)...)
	}
	w := newWindow("ietf")
	if ms := parseMembers(hs.get(prefix + "-limit")); len(ms) > 0 {
		// Drafts up to -03 put the policy here: "100, 100;w=60".
		if n, ok := parseCount(ms[0].item); ok {
			w.Limit = n
			for _, m := range ms {
				q, ok := parseCount(m.item)
				if v, hasW := m.param("w"); ok && hasW && q == n {
					w.Period = period(v)
					break
				}
			}
		}
	}
	w.Remaining = count(hs, prefix+"-remaining")
	w.Reset = reset(hs.get(prefix+"-reset"), c)
	if !w.empty() {
		ws = append(ws, w)
	}
	return ws
}

// parsePolicy reads a RateLimit-Policy list: `300;w=60, 10000;w=86400`
// (drafts -05/-06: the item is the quota) or `"p";q=100;w=60` (-08 on: the
// item is the policy name and q the quota).
func parsePolicy(v string) []Window {
	var ws []Window
	for _, m := range parseMembers(v) {
		w := newWindow("ietf")
		if n, ok := parseCount(m.item); ok {
			w.Limit = n
		} else {
			name := unquote(m.item)
			if name == "" || strings.ContainsAny(name, "=;,") {
				continue
			}
			w.Name = name
			if q, ok := m.param("q"); ok {
				if n, ok := parseCount(q); ok {
					w.Limit = n
				}
			}
		}
		if s, ok := m.param("w"); ok {
			w.Period = period(s)
		}
		if w.Limit < 0 {
			continue
		}
		ws = append(ws, w)
	}
	return ws
}

// parseRateLimitField reads a RateLimit field: `limit=100, remaining=0,
// reset=30` (draft -07; "total" and "resets" are accepted as aliases, ";"
// as a separator) or `"p";r=0;t=30` items (-08 on). Resets are raw delta
// seconds clamped at zero below; Unknown when absent.
func parseRateLimitField(v string) []Window {
	ms := parseMembers(v)
	if len(ms) == 0 {
		return nil
	}
	if strings.Contains(ms[0].item, "=") && !strings.HasPrefix(ms[0].item, `"`) {
		w := newWindow("ietf")
		for _, m := range ms {
			k, val, _ := strings.Cut(m.item, "=")
			pairs := append([]param{{key: strings.ToLower(strings.TrimSpace(k)), value: unquote(val)}}, m.params...)
			for _, p := range pairs {
				switch p.key {
				case "limit", "total":
					if n, ok := parseCount(p.value); ok {
						w.Limit = n
					}
				case "remaining":
					if n, ok := parseCount(p.value); ok {
						w.Remaining = n
					}
				case "reset", "resets":
					if d, ok := parseSeconds(p.value); ok {
						w.Reset = max(d, 0)
					}
				}
			}
		}
		if w.empty() {
			return nil
		}
		return []Window{w}
	}
	var ws []Window
	for _, m := range ms {
		w := newWindow("ietf")
		name := unquote(m.item)
		if strings.ContainsAny(name, "=;,") {
			continue
		}
		w.Name = name
		for _, p := range m.params {
			switch p.key {
			case "q":
				if n, ok := parseCount(p.value); ok {
					w.Limit = n
				}
			case "r":
				if n, ok := parseCount(p.value); ok {
					w.Remaining = n
				}
			case "t":
				if d, ok := parseSeconds(p.value); ok {
					w.Reset = max(d, 0)
				}
			}
		}
		if !w.empty() {
			ws = append(ws, w)
		}
	}
	return ws
}

// bucket returns a header value fit to key learned state: trimmed and
// at most maxBucket bytes.
func bucket(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > maxBucket {
		s = s[:maxBucket]
	}
	return s
}

func appendX(ws []Window, hs *headers, c clock, prefix, dialect string) []Window {
	w := newWindow(dialect)
	w.Limit = count(hs, prefix+"limit")
	if w.Limit < 0 && prefix == "x-rate-limit-" {
		w.Limit = count(hs, "x-rate-limit") // Zendesk
	}
	w.Remaining = count(hs, prefix+"remaining")
	if w.Remaining < 0 && w.Limit >= 0 {
		if used := count(hs, prefix+"used"); used >= 0 {
			w.Remaining = max(w.Limit-used, 0)
		}
	}
	if d, ok := parseSeconds(hs.get(prefix + "reset-after")); ok {
		w.Reset = max(d, 0)
	} else {
		w.Reset = reset(hs.get(prefix+"reset"), c)
	}
	w.Period = period(hs.get(prefix + "time"))
	w.Bucket = bucket(hs.get(prefix + "resource"))
	if w.Bucket == "" {
		w.Bucket = bucket(hs.get(prefix + "bucket"))
	}
	if w.empty() {
		return ws
	}
	return append(ws, w)
}

func appendOpenAI(ws []Window, hs *headers) []Window {
	for _, dim := range [...]string{"requests", "tokens"} {
		w := newWindow("openai")
		w.Name = dim
		w.Refill = true
		w.Limit = count(hs, "x-ratelimit-limit-"+dim)
		w.Remaining = count(hs, "x-ratelimit-remaining-"+dim)
		if d, ok := parseDuration(hs.get("x-ratelimit-reset-" + dim)); ok {
			w.Reset = max(d, 0)
		}
		if !w.empty() {
			ws = append(ws, w)
		}
	}
	return ws
}

func appendAnthropic(ws []Window, hs *headers, c clock) []Window {
	for _, dim := range anthropicDims {
		prefix := "anthropic-ratelimit-" + dim + "-"
		w := newWindow("anthropic")
		w.Name = dim
		w.Refill = true
		w.Limit = count(hs, prefix+"limit")
		w.Remaining = count(hs, prefix+"remaining")
		w.Reset = reset(hs.get(prefix+"reset"), c)
		if !w.empty() {
			ws = append(ws, w)
		}
	}
	return ws
}

// usedOf parses "used/limit" into the limit and the remaining count.
func usedOf(s string) (limit, remaining int64, ok bool) {
	a, b, found := strings.Cut(s, "/")
	if !found {
		return 0, 0, false
	}
	used, ok1 := parseCount(a)
	limit, ok2 := parseCount(b)
	if !ok1 || !ok2 {
		return 0, 0, false
	}
	return limit, max(limit-used, 0), true
}

func appendShopify(ws []Window, hs *headers) []Window {
	limit, remaining, ok := usedOf(hs.get("x-shopify-shop-api-call-limit"))
	if !ok {
		return ws
	}
	w := newWindow("shopify")
	w.Name = "api-call-limit"
	w.Refill = true
	w.Limit, w.Remaining = limit, remaining
	return append(ws, w)
}

// appendSalesforce reads `api-usage=18/5000` and the like, such as
// `per-app-api-usage=17/250(appName=sample-connected-app)`.
func appendSalesforce(ws []Window, hs *headers) []Window {
	for i, entry := range strings.Split(hs.joined("sforce-limit-info"), ",") {
		if i == maxMembers {
			break
		}
		name, val, found := strings.Cut(entry, "=")
		name = strings.TrimSpace(name)
		if !found || name == "" {
			continue
		}
		if j := strings.IndexByte(val, '('); j >= 0 {
			val = val[:j]
		}
		limit, remaining, ok := usedOf(val)
		if !ok {
			continue
		}
		w := newWindow("salesforce")
		w.Name = bucket(name)
		w.Limit, w.Remaining = limit, remaining
		w.Period = 24 * time.Hour
		ws = append(ws, w)
	}
	return ws
}

func appendHubSpot(ws []Window, hs *headers) []Window {
	const p = "x-hubspot-ratelimit-"
	for _, f := range [...]struct {
		name, limit, remaining string
		period                 time.Duration
	}{
		{"daily", p + "daily", p + "daily-remaining", 24 * time.Hour},
		{"secondly", p + "secondly", p + "secondly-remaining", time.Second},
		{"interval", p + "max", p + "remaining", Unknown},
	} {
		w := newWindow("hubspot")
		w.Name = f.name
		w.Limit = count(hs, f.limit)
		w.Remaining = count(hs, f.remaining)
		if w.Limit < 0 && w.Remaining < 0 {
			continue
		}
		w.Period = f.period
		if f.name == "interval" {
			if ms, ok := parseNumber(hs.get(p + "interval-milliseconds")); ok {
				w.Period = secondsToDuration(ms / 1000)
			}
		}
		ws = append(ws, w)
	}
	return ws
}

// compatible reports whether a and b may describe the same limit.
func compatible(a, b Window) bool {
	if a.Bucket != b.Bucket || a.Refill != b.Refill {
		return false
	}
	if a.Period >= 0 && b.Period >= 0 && a.Period != b.Period {
		return false
	}
	if a.Name != "" && b.Name != "" {
		return a.Name == b.Name && (a.Limit < 0 || b.Limit < 0 || a.Limit == b.Limit)
	}
	return a.Limit >= 0 && a.Limit == b.Limit
}

// merge folds each window into the one earlier window it is compatible
// with; a window compatible with none, or with several, stays apart.
// Merged windows keep the lower Remaining and the later Reset.
func merge(in []Window) []Window {
	var out []Window
	for _, w := range in {
		w = w.normalised()
		at := -1
		for i, o := range out {
			if compatible(o, w) {
				if at >= 0 {
					at = -2
					break
				}
				at = i
			}
		}
		if at < 0 {
			out = append(out, w)
			continue
		}
		o := &out[at]
		if o.Name == "" {
			o.Name = w.Name
		}
		if o.Limit < 0 {
			o.Limit = w.Limit
		}
		if w.Remaining >= 0 && (o.Remaining < 0 || w.Remaining < o.Remaining) {
			o.Remaining = w.Remaining
		}
		o.Reset = max(o.Reset, w.Reset)
		if o.Period < 0 {
			o.Period = w.Period
		}
		*o = o.normalised()
	}
	return out
}
